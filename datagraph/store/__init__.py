"""Everything that touches Valkey: key names, the client, and the payload codec."""
