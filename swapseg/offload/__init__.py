"""swapseg.offload"""
