// Drives www/index.html (the test console) and www/broadcast.html (the
// notification page) in headless Chromium against a real wsloop server.
//
// Run with tests/browser/run.sh, or `node --test tests/browser/` once the
// release binary, /usr/bin/chromium and node_modules are in place.
// WSLOOP_BIN and CHROMIUM_PATH override where the two binaries are found.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

import { CHROMIUM, SCREENSHOTS, killAllServers, startServer, stopServer, withTimeout } from "./server.mjs";

const STEP_MS = 5_000;         // any single wait in a page
const CASE_MS = 30_000;
const WHOLE_RUN_MS = 180_000;  // watchdog for the whole file

let server;      // the shared server: { child, port, output }
let browser;
let context;
let baseUrl;
let showcase;    // the console page saved as screenshots/console.png
let notifierShowcase;   // the notification page saved as screenshots/broadcast.png

// ---------------------------------------------------------------------------
// Server and browser lifecycle
// ---------------------------------------------------------------------------

// If anything hangs, the servers still go and the run still ends.
const watchdog = setTimeout(() => {
  console.error(`browser tests: watchdog fired after ${WHOLE_RUN_MS} ms`);
  killAllServers();
  process.exit(2);
}, WHOLE_RUN_MS);
watchdog.unref();

before(async () => {
  server = await startServer(["--protocol", "chat,superchat"]);
  baseUrl = `http://127.0.0.1:${server.port}`;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    timeout: 30_000,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  context.setDefaultTimeout(STEP_MS);
  context.setDefaultNavigationTimeout(STEP_MS);
}, { timeout: 60_000 });

after(async () => {
  for (const [page, file] of [[showcase, "console.png"], [notifierShowcase, "broadcast.png"]]) {
    if (!page || page.isClosed()) continue;
    try {
      mkdirSync(SCREENSHOTS, { recursive: true });
      await page.evaluate(() => window.scrollTo(0, 0));
      await withTimeout(page.screenshot({ path: join(SCREENSHOTS, file) }), STEP_MS, "screenshot");
    } catch (err) {
      console.error(`could not save ${file}: ${err.message}`);
    }
  }
  if (browser) await withTimeout(browser.close(), 10_000, "closing the browser").catch((err) => console.error(err.message));
  if (server) await stopServer(server);
  clearTimeout(watchdog);
}, { timeout: 30_000 });

// ---------------------------------------------------------------------------
// Page helpers
// ---------------------------------------------------------------------------

// Opens a page and collects its uncaught script errors, which fail the case.
async function openPage(path) {
  const page = await context.newPage();
  page.scriptErrors = [];
  page.on("pageerror", (err) => page.scriptErrors.push(err.message));
  await page.goto(baseUrl + path);
  return page;
}

function assertNoScriptErrors(page) {
  assert.deepEqual(page.scriptErrors, [], "the page threw script errors");
}

// On a timeout, the console's event log goes into the error: it tells why.
async function explained(page, promise) {
  try {
    return await promise;
  } catch (err) {
    const log = await page.locator("#log").innerText({ timeout: 1_000 }).catch(() => "(unreadable)");
    err.message += `\n--- event log of the console page ---\n${log}`;
    throw err;
  }
}

async function waitForState(page, text) {
  await explained(page, page.locator("#state", { hasText: text }).waitFor());
}

// Waits for a log line of one kind (open, message, sent, close, problem, ...)
// that contains every given piece of text, and returns its text.
async function waitForLog(page, kind, ...pieces) {
  let line = page.locator(`#log .entry[data-kind="${kind}"]`);
  for (const piece of pieces) line = line.filter({ hasText: piece });
  await explained(page, line.first().waitFor());
  return line.first().innerText();
}

async function openConsoleAndConnect({ protocols = "" } = {}) {
  const page = await openPage("/");
  if (protocols) await page.fill("#protocols", protocols);
  await page.click("#connect");
  await waitForState(page, "OPEN (1)");
  return page;
}

// ---------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------

test("1. the console connects and shows readyState OPEN (1)", { timeout: CASE_MS }, async () => {
  const page = await openPage("/");
  assert.equal(await page.inputValue("#url"), `ws://127.0.0.1:${server.port}/echo`, "URL field is prefilled");

  await page.click("#connect");
  await waitForState(page, "OPEN (1)");
  assert.equal(await page.textContent("#state"), "OPEN (1)");
  await waitForLog(page, "open");
  assert.equal(await page.textContent("#protocol"), "(none)", "no subprotocol was offered");
  assert.match(await page.textContent("#buffered"), /^\d+ bytes?$/);
  assertNoScriptErrors(page);
});

test("2. text and binary messages are echoed into the log", { timeout: CASE_MS }, async () => {
  const page = await openConsoleAndConnect();

  const text = "hello wsloop ✓ (ütf-8)";
  await page.fill("#text", text);
  await page.click("#send-text");
  const textLine = await waitForLog(page, "message", text);
  assert.match(textLine, /text · 25 bytes/, "text echo shows its type and UTF-8 size");

  // binaryType arraybuffer: the echo arrives as an ArrayBuffer.
  await page.selectOption("#binary-type", "arraybuffer");
  await page.fill("#hex", "de ad be ef 00 01 7f ff");
  await page.click("#send-binary");
  const bufferLine = await waitForLog(page, "message", "de ad be ef 00 01 7f ff");
  assert.match(bufferLine, /binary \(ArrayBuffer\) · 8 bytes/);

  // binaryType blob: the echo arrives as a Blob and is read before it is shown.
  await page.selectOption("#binary-type", "blob");
  await page.fill("#hex", "0x0a,0x0b,0x0c");
  await page.click("#send-binary");
  const blobLine = await waitForLog(page, "message", "0a 0b 0c");
  assert.match(blobLine, /binary \(Blob\) · 3 bytes/);

  // The bytes of a chosen file.
  await page.setInputFiles("#file", { name: "ping.bin", mimeType: "application/octet-stream", buffer: Buffer.from([1, 2, 3, 250]) });
  await page.click("#send-file");
  const fileLine = await waitForLog(page, "message", "01 02 03 fa");
  assert.match(fileLine, /binary \(Blob\) · 4 bytes/);

  // A long binary message is shown truncated.
  await page.fill("#hex", "ab".repeat(300));
  await page.click("#send-binary");
  await waitForLog(page, "message", "300 bytes", "(44 more bytes)");

  // Bad hex is refused in the page.
  await page.fill("#hex", "abc");
  await page.click("#send-binary");
  await page.locator("#send-error", { hasText: "even number" }).waitFor();

  assert.equal(await page.textContent("#state"), "OPEN (1)");
  assertNoScriptErrors(page);
});

test("3. closing with 4000 and a reason shows the code, its meaning and the reason", { timeout: CASE_MS }, async () => {
  const page = await openConsoleAndConnect();
  showcase = page;

  await page.fill("#text", "one message before closing");
  await page.click("#send-text");
  await waitForLog(page, "message", "one message before closing");
  await page.fill("#hex", "c0 ff ee");
  await page.click("#send-binary");
  await waitForLog(page, "message", "c0 ff ee");

  await page.fill("#close-code", "4000");
  await page.fill("#close-reason", "done testing");
  await page.click("#close");

  const line = await waitForLog(page, "close", "4000");
  assert.match(line, /4000 Private use/);
  assert.match(line, /close\(4000, "done testing"\)/, "the reason this page sent is shown");
  assert.match(line, /wasClean true/);
  await waitForState(page, "CLOSED (3)");
  assert.equal(await page.textContent("#close-error"), "", "no error for a valid code");
  assertNoScriptErrors(page);
});

test("4. a notification published from broadcast.html reaches the console in room news", { timeout: CASE_MS }, async () => {
  const consolePage = await openPage("/");
  await consolePage.fill("#room", "news");
  await consolePage.click("#join-room");
  await waitForState(consolePage, "OPEN (1)");
  assert.equal(await consolePage.inputValue("#url"), `ws://127.0.0.1:${server.port}/room/news`);

  const notifier = await openPage("/broadcast.html");
  assert.equal(await notifier.inputValue("#room"), "news", "room defaults to news");
  const notice = `Breaking: wsloop ships (${Date.now()})`;
  await notifier.fill("#message", notice);
  await notifier.click("#publish");
  await notifier.locator("#result", { hasText: "delivered" }).waitFor();
  const result = await notifier.textContent("#result");
  assert.match(result, /\{"delivered":1\}/, `publish answer: ${result}`);

  const line = await waitForLog(consolePage, "message", notice);
  assert.match(line, /text ·/, "a text/plain publish arrives as a text message");
  assertNoScriptErrors(consolePage);
  assertNoScriptErrors(notifier);
});

test("4b. broadcast.html's live mode shows what arrives in the room", { timeout: CASE_MS }, async () => {
  const notifier = await openPage("/broadcast.html");
  notifierShowcase = notifier;
  await notifier.fill("#room", "live-test");
  await notifier.click("#live-toggle");
  await notifier.locator("#live-state", { hasText: "OPEN (1)" }).waitFor();

  // Another client in the room speaks; the live feed shows it.
  const consolePage = await openPage("/");
  await consolePage.fill("#room", "live-test");
  await consolePage.click("#join-room");
  await waitForState(consolePage, "OPEN (1)");
  await consolePage.fill("#text", "said in the room");
  await consolePage.click("#send-text");
  await notifier.locator("#live-log li", { hasText: "said in the room" }).waitFor();

  // A publish reaches both the console and the live feed.
  await notifier.fill("#message", "published to two");
  await notifier.click("#publish");
  await notifier.locator("#result", { hasText: '{"delivered":2}' }).waitFor();
  await notifier.locator("#live-log li", { hasText: "published to two" }).waitFor();
  await waitForLog(consolePage, "message", "published to two");
  assertNoScriptErrors(notifier);
});

test("5. a subprotocol chosen in the page is shown as negotiated", { timeout: CASE_MS }, async () => {
  const page = await openConsoleAndConnect({ protocols: "superchat" });
  await page.locator("#protocol", { hasText: "superchat" }).waitFor();
  assert.equal(await page.textContent("#protocol"), "superchat");
  await waitForLog(page, "open", 'protocol "superchat"');

  // Offering several: the server picks the first of its own list (chat, superchat).
  await page.fill("#protocols", "superchat, chat");
  await page.click("#connect");
  await waitForLog(page, "open", 'protocol "chat"');
  assert.equal(await page.textContent("#protocol"), "chat");
  assertNoScriptErrors(page);
});

test("6. an invalid close code or reason is refused in the page with a visible error", { timeout: CASE_MS }, async () => {
  const page = await openConsoleAndConnect();
  const error = page.locator("#close-error");

  for (const code of ["1005", "2999", "5000", "abc"]) {
    await page.fill("#close-code", code);
    await page.click("#close");
    await error.filter({ hasText: code }).waitFor();
    assert.ok(await error.isVisible(), `the error for ${code} is visible`);
  }
  assert.match(await error.textContent(), /not a whole number/);

  await page.fill("#close-code", "1005");
  await page.click("#close");
  assert.match(await error.textContent(), /1005 No Status Rcvd/);
  assert.match(await error.textContent(), /1000 or 3000–4999/);

  // 62 × "é" is 124 UTF-8 bytes: one too many.
  await page.fill("#close-code", "4001");
  await page.fill("#close-reason", "é".repeat(62));
  await page.click("#close");
  await error.filter({ hasText: "124 UTF-8 bytes" }).waitFor();

  // Nothing was closed.
  assert.equal(await page.textContent("#state"), "OPEN (1)");
  assert.equal(await page.locator('#log .entry[data-kind="close"]').count(), 0);

  // A valid pair clears the error and closes.
  await page.fill("#close-reason", "é".repeat(61));
  await page.click("#close");
  await waitForLog(page, "close", "4001");
  assert.equal(await error.textContent(), "");
  assertNoScriptErrors(page);
});

test("7. the console and the notification page link to each other", { timeout: CASE_MS }, async () => {
  const page = await openPage("/");
  await page.click("header nav a");
  await page.waitForURL(`${baseUrl}/broadcast.html`);
  await page.locator("#publish").waitFor();

  await page.click("header nav a");
  await page.waitForURL(`${baseUrl}/`);
  await page.locator("#connect").waitFor();
  assertNoScriptErrors(page);
});

test("8. with --publish-token, broadcast.html needs the token", { timeout: CASE_MS }, async () => {
  const guarded = await startServer(["--publish-token", "s3cret"]);
  try {
    const page = await context.newPage();
    await page.goto(`http://127.0.0.1:${guarded.port}/broadcast.html`);
    await page.fill("#message", "members only");

    await page.click("#publish");
    await page.locator("#result", { hasText: "401" }).waitFor();
    assert.match(await page.textContent("#result"), /wrong or missing token/);

    await page.fill("#token", "s3cret");
    await page.click("#publish");
    await page.locator("#result", { hasText: '{"delivered":0}' }).waitFor();
    await page.close();
  } finally {
    await stopServer(guarded);
  }
});

test("9. over https:// the console connects with wss://, and http:// is redirected", { timeout: CASE_MS }, async () => {
  // A throwaway certificate, made here; the browser is told to accept it.
  const dir = mkdtempSync(join(tmpdir(), "wsloop-browser-tls-"));
  const cert = join(dir, "cert.pem");
  const key = join(dir, "key.pem");
  execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], { stdio: "ignore" });
  const secure = await startServer(["--tls-cert", cert, "--tls-key", key]);
  const tlsBrowser = await chromium.launch({
    executablePath: CHROMIUM,
    timeout: 30_000,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--ignore-certificate-errors", "--disable-background-networking", "--disable-component-update"],
  });
  try {
    const ctx = await tlsBrowser.newContext();
    ctx.setDefaultTimeout(STEP_MS);
    ctx.setDefaultNavigationTimeout(STEP_MS);
    const page = await ctx.newPage();
    page.scriptErrors = [];
    page.on("pageerror", (err) => page.scriptErrors.push(err.message));

    // Plain HTTP to the TLS port is sent on to https://.
    await page.goto(`http://127.0.0.1:${secure.port}/`);
    assert.equal(page.url(), `https://127.0.0.1:${secure.port}/`);
    assert.equal(await page.inputValue("#url"), `wss://127.0.0.1:${secure.port}/echo`);

    await page.click("#connect");
    await waitForState(page, "OPEN (1)");
    await page.fill("#text", "over TLS ✓");
    await page.click("#send-text");
    await waitForLog(page, "message", "over TLS ✓");
    mkdirSync(SCREENSHOTS, { recursive: true });
    await page.screenshot({ path: join(SCREENSHOTS, "console-https.png") });
    assertNoScriptErrors(page);
  } finally {
    await withTimeout(tlsBrowser.close(), 10_000, "closing the TLS browser").catch((err) => console.error(err.message));
    await stopServer(secure);
    rmSync(dir, { recursive: true, force: true });
  }
});

test("10. Chromium negotiates permessage-deflate and a 1 MiB compressible message comes back whole", { timeout: CASE_MS }, async () => {
  const page = await openConsoleAndConnect();
  // The console shows what the browser and the server agreed (the server's default is --deflate shared).
  await explained(page, page.locator("#extensions", { hasText: "permessage-deflate" }).waitFor());
  assert.match(await page.textContent("#extensions"), /^permessage-deflate/);
  await waitForLog(page, "open", "permessage-deflate");

  // 1 MiB of JSON-like text through the page's own WebSocket: sent compressed by Chromium,
  // inflated, echoed compressed by the server, inflated again by Chromium.
  const result = await explained(page, page.evaluate(async (url) => {
    const row = (i) => `{"id":${i},"type":"trade","price":${(i * 7919) % 10007},"tags":["a","b"]},`;
    let text = "";
    for (let i = 0; text.length < (1 << 20); i++) text += row(i);
    text = text.slice(0, 1 << 20);
    const ws = new WebSocket(url);
    const echoed = await new Promise((resolve, reject) => {
      ws.onopen = () => ws.send(text);
      ws.onmessage = (e) => resolve(e.data);
      ws.onerror = () => reject(new Error("WebSocket error"));
      setTimeout(() => reject(new Error("no echo within 8 s")), 8_000);
    });
    const extensions = ws.extensions;
    ws.close();
    return { same: echoed === text, length: echoed.length, extensions };
  }, `ws://127.0.0.1:${server.port}/echo`));
  assert.equal(result.length, 1 << 20);
  assert.ok(result.same, "the echo differs from what was sent");
  assert.match(result.extensions, /^permessage-deflate/);

  // It crossed the wire compressed both ways: the server's access line for that session counts
  // wire bytes, far fewer than the 1 MiB each way of the message itself.
  const wire = /"WebSocket \/echo" \d+ \d+ms in=(\d+) out=(\d+)/g;
  let big;
  for (const end = Date.now() + STEP_MS; !big && Date.now() < end;) {
    big = [...server.output.matchAll(wire)].find((m) => Number(m[1]) > 10_000);
    if (!big) await new Promise((r) => setTimeout(r, 50));
  }
  assert.ok(big, "no access line for the 1 MiB session");
  console.log(`1 MiB echo with permessage-deflate: ${big[1]} bytes in, ${big[2]} bytes out on the wire`);
  assert.ok(Number(big[1]) < (1 << 20) / 4 && Number(big[2]) < (1 << 20) / 4,
    `wire bytes in=${big[1]} out=${big[2]} for a 1 MiB message each way`);
  assertNoScriptErrors(page);
});
