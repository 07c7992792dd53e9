"""Everything that speaks Flowroute: webhook payloads, the API client, the simulator."""
