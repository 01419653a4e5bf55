// Screenshot of the tpuchat chat UI in a headless browser (tpuchat web + textual-serve).
// Not part of the pytest suite. To reproduce assets/tui-web.png:
//
//   cd /work/main
//   tpuchat web --model "$(python -c 'from tpuchat.compiler.build import bmodel_path; print(bmodel_path("demo"))')" --port 8099 &
//   mkdir -p /tmp/pw && cd /tmp/pw && npm install playwright-core     # no `npx playwright install` needed
//   node /work/main/tests/unit/tui/web_screenshot/shoot.mjs      # run from /tmp/pw (or set NODE_PATH=/tmp/pw/node_modules)
//   kill %1
//
// Env: URL (default http://127.0.0.1:8099/), OUT (default assets/tui-web.png beside this repo),
// CHROMIUM (default /usr/bin/chromium), MESSAGE (text to send; empty = don't send), STREAM_WAIT_MS.
import { createRequire } from 'node:module';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

// playwright-core is installed outside the repo (e.g. /tmp/pw): resolve it via NODE_PATH / cwd.
const require = createRequire(join(process.cwd(), 'noop.js'));
const { chromium } = require('playwright-core');

const here = dirname(fileURLToPath(import.meta.url));
const URL = process.env.URL || 'http://127.0.0.1:8099/';
const OUT = process.env.OUT || resolve(here, '../../../assets/tui-web.png');
const MESSAGE = process.env.MESSAGE ?? 'Hello from the browser';
const STREAM_WAIT_MS = Number(process.env.STREAM_WAIT_MS || 20000);

const userDataDir = mkdtempSync(join(tmpdir(), 'tpuchat-shot-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run',
         '--disable-component-update', '--disable-sync'],
  viewport: { width: 1280, height: 800 },
});
const page = context.pages()[0] || await context.newPage();
page.on('console', (m) => console.log(`[console.${m.type()}] ${m.text()}`));
page.on('pageerror', (e) => console.log(`[pageerror] ${e.message}`));
page.on('requestfailed', (r) => console.log(`[requestfailed] ${r.url()} ${r.failure()?.errorText}`));

// xterm.js draws on a <canvas>, so the screen text isn't in the DOM: tap the websocket instead and keep
// the tail of what the app wrote (textual-serve relays the pty output as binary frames).
await page.addInitScript(() => {
  const Native = window.WebSocket;
  const dec = new TextDecoder();
  window.__ptyTail = '';
  const keep = (t) => { window.__ptyTail = (window.__ptyTail + t).slice(-200000); };
  window.WebSocket = class extends Native {
    constructor(...a) {
      super(...a);
      this.addEventListener('message', async (ev) => {
        const d = ev.data;
        if (typeof d === 'string') keep(d);
        else if (d instanceof ArrayBuffer) keep(dec.decode(d, { stream: true }));
        else if (d instanceof Blob) keep(dec.decode(await d.arrayBuffer(), { stream: true }));
      });
    }
  };
});
const ptyText = () => page.evaluate(() => window.__ptyTail.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, ''));

try {
  await page.goto(URL, { waitUntil: 'domcontentloaded' });
  // The start page: with ?delay the "Start" button is shown; clicking it (or loading without ?delay)
  // opens the websocket and textual-serve launches one `tpuchat chat` per tab.
  const start = page.locator('#start');
  if (await start.isVisible().catch(() => false)) await start.click();
  // The app is up once the first byte arrived (body.-first-byte) and the status bar reads "idle".
  await page.waitForSelector('body.-first-byte', { timeout: 30000 });
  const t0 = Date.now();
  let idle = false;
  while (!idle && Date.now() - t0 < 60000) {
    await page.waitForTimeout(1000);
    idle = /\bidle\b/.test(await ptyText());
  }
  console.log(`status bar ${idle ? 'idle' : 'NOT idle'} after ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  if (!idle) throw new Error('chat UI did not reach "idle" within 60 s');
  await page.waitForTimeout(1000);  // let the last frame paint
  if (MESSAGE) {
    // Focus the prompt: it sits in the right pane, 4th row from the bottom (above status bar + footer).
    const box = await page.locator('.xterm-screen').boundingBox();
    const rowH = box.height / Math.round(box.height / 18);  // data-font-size 16 -> 18 px rows
    await page.mouse.click(box.x + box.width * 0.6, box.y + box.height - 3.5 * rowH);
    await page.waitForTimeout(300);
    await page.keyboard.type(MESSAGE, { delay: 30 });
    await page.keyboard.press('Enter');
    await page.waitForTimeout(STREAM_WAIT_MS);
    console.log(`after sending: message shown: ${(await ptyText()).includes(MESSAGE)}`);
  } else {
    await page.waitForTimeout(1000);
  }
  await page.screenshot({ path: OUT });
  console.log(`saved ${OUT}`);
} finally {
  await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
