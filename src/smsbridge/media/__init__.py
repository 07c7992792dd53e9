"""MMS attachments kept by the bridge: fetched on receipt, stored by content hash, served by signed links.

- `store`: the storage interface and the local directory; `s3`: S3-compatible object storage.
- `fetch`: streamed downloads with caps, a timeout and retries.
- `links`: HMAC-signed, expiring tokens for `GET /media/{token}`; `serve`: that route.
- `inbound`: what the inbound stage does with an MMS; `outbound`: checking and re-hosting a PBX's media.
"""
