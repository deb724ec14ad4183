// The browser build, driven in headless Chromium as a person would drive it: the page is opened,
// the canvas clicked and keys pressed, files dropped on it; what happened is read from what the
// page logs to its console ("cinder: ..." lines) and from screenshots.
//
//   node web/tests/page.mjs SITE_DIR OUT_DIR [NATIVE_CINDER]
//
// SITE_DIR is the built site (scripts/web.sh build), OUT_DIR receives screenshots, and
// NATIVE_CINDER, when given, is the native `cinder` binary whose CPU losses the page's CPU
// run must reproduce. Exits non-zero on the first failed check.

import { createServer } from "node:http";
import { readFile, mkdir } from "node:fs/promises";
import { execFileSync } from "node:child_process";
import path from "node:path";
import { chromium } from "playwright-core";

const [siteDir, outDir, nativeCinder] = process.argv.slice(2);
if (!siteDir || !outDir) {
  console.error("usage: node web/tests/page.mjs SITE_DIR OUT_DIR [NATIVE_CINDER]");
  process.exit(2);
}
const STEPS = 20;
const TRAIN_TIMEOUT_MS = 15 * 60 * 1000;

const types = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript",
  ".wasm": "application/wasm",
  ".png": "image/png",
  ".ttf": "font/ttf",
  ".gz": "application/gzip",
};

// A static server for the site on 127.0.0.1 (an ephemeral port).
async function serve(root) {
  const server = createServer(async (req, res) => {
    const url = new URL(req.url, "http://127.0.0.1");
    const file = path.join(root, decodeURIComponent(url.pathname === "/" ? "/index.html" : url.pathname));
    if (!file.startsWith(path.resolve(root))) {
      res.writeHead(403).end();
      return;
    }
    try {
      const body = await readFile(file);
      res.writeHead(200, {
        "content-type": types[path.extname(file)] ?? "application/octet-stream",
        "content-length": body.length,
      });
      res.end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  return server;
}

const results = [];
function check(name, ok, detail = "") {
  results.push({ name, ok });
  console.log(`${ok ? "ok" : "FAILED"}: ${name}${detail ? ` (${detail})` : ""}`);
  if (!ok) {
    throw new Error(`${name} ${detail}`);
  }
}

// One browser session on the page; `webgpu` decides whether Chromium offers a WebGPU adapter.
async function session(base, { webgpu, query }) {
  const args = [
    "--headless=new",
    "--no-sandbox",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ];
  if (webgpu) {
    args.push("--enable-unsafe-webgpu");
  }
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args });
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const lines = [];
  const errors = [];
  page.on("console", (m) => {
    const text = m.text();
    if (m.type() === "error") {
      errors.push(text);
    }
    if (text.startsWith("cinder:")) {
      lines.push(text.slice("cinder:".length).trim());
      console.log(`  [page] ${text.slice(0, 200)}`);
    }
  });
  page.on("pageerror", (e) => errors.push(`page error: ${e.message}`));
  await page.goto(`${base}/?${query}`);
  // The first line from index `from` on matching `pattern`.
  const waitFor = async (what, pattern, timeout, from = 0) => {
    const start = Date.now();
    for (;;) {
      const hit = lines.slice(from).find((l) => pattern.test(l));
      if (hit) {
        return hit;
      }
      if (errors.length) {
        throw new Error(`console errors while waiting for ${what}: ${errors.join(" | ")}`);
      }
      if (Date.now() - start > timeout) {
        throw new Error(`no ${what} within ${timeout / 1000} s`);
      }
      await page.waitForTimeout(250);
    }
  };
  return { browser, page, lines, errors, waitFor };
}

// Starts training with the keyboard (Ctrl+Enter on the focused canvas) and waits for the end.
async function train(s, label) {
  const from = s.lines.length;
  await s.page.mouse.click(640, 400);
  await s.page.keyboard.press("Control+Enter");
  await s.waitFor("the run to start", /^train status: (Preparing|Running)/, 60_000, from);
  const end = await s.waitFor("the run to end", /^train status: (Finished|Stopped|Failed)/, TRAIN_TIMEOUT_MS, from);
  check(`${label}: the run finished`, end.includes("Finished"), end);
  const lines = s.lines.slice(from);
  const losses = lines
    .map((l) => /^step (\d+)\/\d+ loss ([0-9.]+)/.exec(l))
    .filter(Boolean)
    .map((m) => [Number(m[1]), Number(m[2])]);
  check(`${label}: ${STEPS} steps reported`, losses.length === STEPS, `${losses.length} steps`);
  const first = losses[0][1];
  const tail = losses.slice(-5).map((l) => l[1]);
  const late = tail.reduce((a, b) => a + b, 0) / tail.length;
  check(`${label}: the loss falls by 10%`, late < 0.9 * first, `step 1 ${first.toFixed(4)}, mean of the last 5 ${late.toFixed(4)}`);
  const sample = lines.find((l) => l.startsWith("sample at step"));
  check(`${label}: a sample appeared`, Boolean(sample), sample?.slice(0, 80));
  const tps = lines
    .map((l) => /^step \d+\/\d+ .* ([0-9]+) tok\/s/.exec(l))
    .filter(Boolean)
    .map((m) => Number(m[1]));
  console.log(`${label}: median ${tps.sort((a, b) => a - b)[tps.length >> 1]} tokens/s over ${tps.length} steps`);
  // Give the plots a frame after the last step, then keep what the page shows.
  await s.page.waitForTimeout(1000);
  const shot = path.join(outDir, `train-${label}.png`);
  await s.page.screenshot({ path: shot });
  console.log(`${label}: screenshot ${shot}`);
  return losses;
}

// The native CPU run with the same settings: the first steps' losses.
function nativeLosses(binary, steps) {
  const dir = execFileSync("mktemp", ["-d"]).toString().trim();
  try {
    execFileSync(
      binary,
      ["train", "--device", "cpu", "--steps", String(STEPS), "--stop-after", String(steps),
        "--sample-every", "10", "--out", path.join(dir, "run"), "--quiet"],
      { stdio: ["ignore", "ignore", "inherit"] },
    );
    return execFileSync("cat", [path.join(dir, "run", "metrics.jsonl")])
      .toString()
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l))
      .map((r) => [r.step, r.loss]);
  } finally {
    execFileSync("rm", ["-rf", dir]);
  }
}

await mkdir(outDir, { recursive: true });
const server = await serve(path.resolve(siteDir));
const base = `http://127.0.0.1:${server.address().port}`;
const query = `fresh&steps=${STEPS}&sample-every=10${process.env.CINDER_WEB_QUERY ?? ""}`;
const only = process.env.CINDER_WEB_ONLY; // "webgpu" or "cpu": one of the two sessions
let failed = false;
try {
  // 1: WebGPU offered: the page opens on it, loads the corpus and the font, and logs no error.
  if (only !== "cpu") {
    const s = await session(base, { webgpu: true, query });
    try {
      const backend = await s.waitFor("the backend line", /^backend:/, 120_000);
      check("webgpu: the page says it computes on WebGPU", backend.startsWith("backend: WebGPU"), backend);
      await s.waitFor("the Tang poems", /^corpus tang:/, 120_000);
      await s.page.waitForTimeout(3000);
      await s.page.screenshot({ path: path.join(outDir, "page-webgpu.png") });
      check("webgpu: no console errors", s.errors.length === 0, s.errors.join(" | "));
    } finally {
      await s.browser.close();
    }
  }
  // 3: no WebGPU adapter: the CPU backend, with the native CPU run's losses.
  if (only !== "webgpu") {
    const s = await session(base, { webgpu: false, query });
    try {
      const backend = await s.waitFor("the backend line", /^backend:/, 120_000);
      check("cpu: without WebGPU the page computes on the CPU", backend.startsWith("backend: CPU"), backend);
      await s.waitFor("the Tang poems", /^corpus tang:/, 120_000);
      const losses = await train(s, "cpu");
      // A text file dropped on the canvas becomes the corpus, and trains.
      const verses = [];
      for (let i = 0; i < 400; i++) {
        verses.push(`the ember ${i % 7} glows and the kettle ${i % 5} sings by the window ${i % 3}`);
      }
      const from = s.lines.length;
      const dropped = await s.page.evaluateHandle((text) => {
        const data = new DataTransfer();
        data.items.add(new File([text], "verses.txt", { type: "text/plain" }));
        return data;
      }, verses.join("\n") + "\n");
      for (const type of ["dragenter", "dragover", "drop"]) {
        await s.page.dispatchEvent("canvas", type, { dataTransfer: dropped, clientX: 640, clientY: 400 });
      }
      const corpus = await s.waitFor("the dropped file", /^corpus verses\.txt:/, 30_000, from);
      check("cpu: a dropped text file becomes the corpus", true, corpus);
      await train(s, "dropped");
      check("cpu: no console errors", s.errors.length === 0, s.errors.join(" | "));
      if (nativeCinder) {
        const native = nativeLosses(nativeCinder, 3);
        const worst = Math.max(...native.map(([step, loss]) => Math.abs(loss - losses[step - 1][1])));
        check(
          "cpu: the first 3 losses equal the native CPU run's within 1e-4",
          native.length === 3 && worst <= 1e-4,
          `page ${losses.slice(0, 3).map((l) => l[1]).join(", ")}; native ${native.map((l) => l[1]).join(", ")}`,
        );
      }
    } finally {
      await s.browser.close();
    }
  }
} catch (e) {
  failed = true;
  console.log(`FAILED: ${e.message}`);
} finally {
  server.close();
}
const passed = results.filter((r) => r.ok).length;
console.log(`browser: ${passed} passed, ${failed ? 1 : 0} failed`);
process.exit(failed ? 1 : 0);
