"""`limner eval`: benchmark suites run through scripted policies that drive limner over MCP (an MCP client of
the server, so it sits above server/ in the import layers)."""
