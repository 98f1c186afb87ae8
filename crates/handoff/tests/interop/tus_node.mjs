// Uploads one file to a Handoff server with the unmodified tus-js-client (Node), for tests/tus_interop.rs.
// Usage: node tus_node.mjs BASE_URL TOKEN FILE CHUNK_SIZE(0 = one request) DELAY_MS
// Prints `url <upload url>` once known, `progress <bytes accepted>` after each chunk, and finally
// `done <upload url> <file key>`; exits non-zero on failure. tus-js-client's default retries (0, 1, 3 and 5 s apart)
// ride out a server restart: the server's default lease (6 s) runs out before the last of them.
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import * as tus from 'tus-js-client';

const [base, token, file, chunkSize, delayMs] = process.argv.slice(2);
const data = readFileSync(file);
let fileKey = null;

const upload = new tus.Upload(data, {
  endpoint: `${base}/uploads`,
  headers: { Authorization: `Bearer ${token}` },
  chunkSize: Number(chunkSize) > 0 ? Number(chunkSize) : Infinity,
  metadata: { filename: basename(file), filetype: 'application/x-interop' },
  onBeforeRequest: (req) =>
    // A pause per request, so a test can kill the server while the upload is in flight.
    req.getMethod() === 'PATCH' ? new Promise((resolve) => setTimeout(resolve, Number(delayMs))) : undefined,
  onAfterResponse: (req, res) => {
    const key = res.getHeader('Handoff-File-Key');
    if (key) fileKey = key;
  },
  onUploadUrlAvailable: () => console.log(`url ${upload.url}`),
  onChunkComplete: (_size, accepted) => console.log(`progress ${accepted}`),
  onError: (error) => {
    console.error(`tus-js-client failed: ${error}`);
    process.exit(1);
  },
  onSuccess: () => {
    console.log(`done ${upload.url} ${fileKey}`);
  },
});
upload.start();
