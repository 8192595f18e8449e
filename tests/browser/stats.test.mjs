// Drives www/stats.html (the live dashboard) in headless Chromium while a bounded load runs
// against a real wsloop: the numbers must move, the charts must draw, and a screenshot of it
// is saved as screenshots/stats.png.
//
// The load is made by a second page of the same browser: WebSocket clients spread over
// rooms of different sizes, each sending a message every 100 ms, for at most LOAD_MS.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

import { CHROMIUM, SCREENSHOTS, killAllServers, startServer, stopServer } from "./server.mjs";

const STEP_MS = 10_000;
const CASE_MS = 60_000;
const LOAD_MS = 30_000;        // the load stops by itself after this
const CLIENTS = 160;           // WebSockets of the load (a browser allows a few hundred)
const ROOMS = 24;

let server;
let browser;
let context;
let baseUrl;

const watchdog = setTimeout(() => {
  console.error("stats.test: watchdog fired");
  killAllServers();
  process.exit(2);
}, 150_000);
watchdog.unref();

before(async () => {
  server = await startServer(["--access-log", "off"]);
  baseUrl = `http://127.0.0.1:${server.port}`;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    timeout: 30_000,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  context.setDefaultTimeout(STEP_MS);
}, { timeout: 60_000 });

after(async () => {
  if (browser) await browser.close().catch(() => {});
  if (server) await stopServer(server);
  clearTimeout(watchdog);
}, { timeout: 30_000 });

// The load, inside a page: room i gets a share that falls with i, so the top rooms differ.
async function startLoad() {
  const page = await context.newPage();
  await page.goto(baseUrl + "/broadcast.html");
  await page.evaluate(({ clients, rooms, loadMs }) => {
    const sockets = [];
    const names = Array.from({ length: rooms }, (_, i) => ["lobby", "trading", "support", "news", "game"][i % 5] + "-" + i);
    const weights = names.map((_, i) => 1 / (i + 1));
    const total = weights.reduce((a, b) => a + b, 0);
    let made = 0;
    names.forEach((name, i) => {
      const n = i === rooms - 1 ? clients - made : Math.max(1, Math.round(clients * weights[i] / total));
      for (let k = 0; k < n && made < clients; k++, made++) {
        const ws = new WebSocket(`ws://${location.host}/room/${name}`);
        sockets.push(ws);
      }
    });
    const payload = "x".repeat(200);
    const tick = setInterval(() => {
      for (const ws of sockets) if (ws.readyState === 1 && Math.random() < 0.5) ws.send(payload);
    }, 100);
    window.__stopLoad = () => { clearInterval(tick); for (const ws of sockets) ws.close(); };
    setTimeout(window.__stopLoad, loadMs);
    window.__open = () => sockets.filter((ws) => ws.readyState === 1).length;
  }, { clients: CLIENTS, rooms: ROOMS, loadMs: LOAD_MS });
  await page.waitForFunction((n) => window.__open() >= n, CLIENTS * 0.9);
  return page;
}

// Counts the canvas pixels that differ from its top-left (background) pixel.
function inkedPixels(page, id) {
  return page.evaluate((id) => {
    const c = document.getElementById(id);
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let inked = 0, colored = 0;
    for (let i = 0; i < d.length; i += 4) {
      if (d[i + 3] === 0) continue;
      inked++;
      const [r, g, b] = [d[i], d[i + 1], d[i + 2]];
      if (Math.max(r, g, b) - Math.min(r, g, b) > 60) colored++;
    }
    return { inked, colored, size: c.width * c.height };
  }, id);
}

test("the dashboard shows the load moving, as numbers and charts", { timeout: CASE_MS }, async () => {
  const load = await startLoad();
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (err) => errors.push(err.message));
  await page.goto(baseUrl + "/stats.html");
  // A few polls under load.
  await page.waitForFunction(() => window.__dashboard.polls >= 6, null, { timeout: 15_000 });
  assert.deepEqual(errors, [], "the page threw script errors");

  const first = await page.evaluate(() => window.__dashboard.last.messages_in);
  await page.waitForFunction((n) => window.__dashboard.last.messages_in > n + 100, first);

  assert.equal(await page.textContent("#live"), "live");
  const conn = Number((await page.textContent("#v-conn")).replace(/[^\d.]/g, ""));
  assert.ok(conn >= CLIENTS * 0.9, `connections shown: ${conn}`);
  const rate = await page.textContent("#v-min");
  assert.notEqual(rate.trim(), "0", "messages in per second");
  const rooms = await page.locator("#rooms li").count();
  assert.equal(rooms, 10, "the top 10 rooms only");
  assert.match(await page.textContent("#rooms-more"), /and 14 more rooms/);
  assert.match(await page.textContent("#rooms li:first-child .name"), /lobby-0/);
  for (const id of ["c-conn", "c-msg", "c-bytes", "c-bad"]) {
    const { inked, colored, size } = await inkedPixels(page, id);
    assert.ok(inked > size * 0.01, `${id} has drawing: ${inked}/${size}`);
    if (id !== "c-bad") assert.ok(colored > 200, `${id} has coloured series lines: ${colored}`);
  }
  mkdirSync(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: join(SCREENSHOTS, "stats.png") });
  await load.evaluate(() => window.__stopLoad());
});
