// Drives tus-js-client's browser bundle in a real Chromium (Debian's /usr/bin/chromium) through playwright-core,
// for tests/tus_browser.rs. Usage: node tus_browser.mjs PAGE_URL ENDPOINT HEADERS_JSON
// Opens PAGE_URL (served from another origin than ENDPOINT's), runs window.runUpload(ENDPOINT, HEADERS) there and
// prints `result <json>`; exits non-zero on failure. Page console lines go to stderr.
import { chromium } from 'playwright-core';

const [pageUrl, endpoint, headersJson] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-background-networking'],
});
let failed = false;
try {
  const page = await browser.newPage();
  page.on('console', (message) => console.error(`page console: ${message.text()}`));
  page.on('pageerror', (error) => console.error(`page error: ${error}`));
  await page.goto(pageUrl);
  const result = await page.evaluate(
    ({ endpoint, headers }) => window.runUpload(endpoint, headers),
    { endpoint, headers: JSON.parse(headersJson) },
  );
  console.log(`result ${JSON.stringify(result)}`);
} catch (error) {
  console.error(`browser upload failed: ${error}`);
  failed = true;
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
