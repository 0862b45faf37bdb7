"""The turnproof conformance suite.

Each test checks one property of the shared contract and is tagged with the
requirement IDs it verifies. The package ships inside the turnproof wheel, so
a third party runs it against its own adapter with `pytest --pyargs scenarios`.
"""
