"""swapseg.data"""
