"""The actors of a worker-mesh node, one module each, with the pure logic they drive beside them."""
