"""swapseg.evaluation"""
