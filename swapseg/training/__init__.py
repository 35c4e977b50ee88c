"""swapseg.training"""
