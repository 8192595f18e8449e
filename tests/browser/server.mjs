// What the browser test files share: the wsloop binary and Chromium they use, starting a
// server on a free port (read from its "listening on" log line) and stopping it by PID.

import { spawn } from "node:child_process";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const HERE = dirname(fileURLToPath(import.meta.url));
export const ROOT = resolve(HERE, "..", "..");
export const SERVER_BIN = process.env.WSLOOP_BIN || join(ROOT, "target", "release", "wsloop");
export const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
export const SCREENSHOTS = join(HERE, "screenshots");
const SERVER_START_MS = 15_000;

const running = new Set();   // every server child started here and not yet seen to exit

// Starts wsloop on a free loopback port; resolves to { child, port, output } once it listens.
// `output` keeps growing with everything the server logs.
export function startServer(extraArgs = []) {
  return new Promise((resolvePort, reject) => {
    const args = ["--port", "0", "--bind", "127.0.0.1", ...extraArgs];
    const child = spawn(SERVER_BIN, args, {
      cwd: ROOT,
      env: { ...process.env, RUST_LOG: "info" },   // the port is read from the info log
      stdio: ["ignore", "pipe", "pipe"],
    });
    const state = { child, port: 0, output: "" };
    running.add(child);
    child.on("exit", () => running.delete(child));
    const timer = setTimeout(() => {
      stopServer(state);
      reject(new Error(`wsloop did not log "listening on" within ${SERVER_START_MS} ms:\n${state.output}`));
    }, SERVER_START_MS);

    const watch = (chunk) => {
      state.output += chunk.toString();
      const match = state.output.match(/listening on wss?:\/\/127\.0\.0\.1:(\d+)/);
      if (match && state.port === 0) {
        state.port = Number(match[1]);
        clearTimeout(timer);
        resolvePort(state);
      }
    };
    child.stderr.on("data", watch);
    child.stdout.on("data", watch);
    child.on("error", (err) => {
      clearTimeout(timer);
      reject(new Error(`cannot start ${SERVER_BIN}: ${err.message}`));
    });
    child.on("exit", (code, signal) => {
      if (state.port === 0) {
        clearTimeout(timer);
        reject(new Error(`wsloop exited (code ${code}, signal ${signal}) before listening:\n${state.output}`));
      }
    });
  });
}

// SIGTERM by PID, then SIGKILL if it is still there after two seconds.
export function stopServer(state) {
  const { child } = state;
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((done) => {
    const force = setTimeout(() => { try { process.kill(child.pid, "SIGKILL"); } catch {} done(); }, 2_000);
    child.once("exit", () => { clearTimeout(force); done(); });
    try { process.kill(child.pid, "SIGTERM"); } catch { clearTimeout(force); done(); }
  });
}

// If anything hangs, the servers still go: call from a watchdog and on exit.
export function killAllServers() {
  for (const child of running) { try { process.kill(child.pid, "SIGKILL"); } catch {} }
}
process.on("exit", killAllServers);

export function withTimeout(promise, ms, what) {
  let timer;
  const limit = new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what} took over ${ms} ms`)), ms); });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}
