"""The bridge's own small SIP: MESSAGE (RFC 3428) out through a next hop, with digest auth."""
