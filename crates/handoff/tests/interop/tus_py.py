"""Uploads one file to a Handoff server with the unmodified tuspy client, for tests/tus_interop.rs.

Usage: python3 tus_py.py BASE_URL TOKEN FILE CHUNK_SIZE(0 = one request) DELAY_MS
Prints `url <upload url>`, `progress <offset>` after each chunk and `done <upload url>`; exits non-zero on failure.
tuspy's own retries (HEAD for the offset, then PATCH again) ride out a server restart.
"""

import os
import sys
import time

from tusclient import client

base, token, path, chunk_size, delay_ms = sys.argv[1:6]
tus = client.TusClient(f"{base}/uploads", headers={"Authorization": f"Bearer {token}"})
size = os.path.getsize(path)
uploader = tus.uploader(
    path,
    chunk_size=int(chunk_size) if int(chunk_size) > 0 else size + 1,
    metadata={"filename": os.path.basename(path), "filetype": "application/x-interop"},
    retries=10,
    retry_delay=2,
)
if uploader.url is None:
    # Created here rather than by the first chunk, so that an empty file gets an upload too.
    uploader.set_url(uploader.create_url())
print(f"url {uploader.url}", flush=True)
while uploader.offset < size:
    time.sleep(int(delay_ms) / 1000)
    uploader.upload_chunk()
    print(f"progress {uploader.offset}", flush=True)
print(f"done {uploader.url}", flush=True)
