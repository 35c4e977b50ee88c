"""swapseg.offload.plan"""
