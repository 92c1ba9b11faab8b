// Headless Chromium driven by playwright-core, for the web console's tests (tests/test_dashboard.py).
//
//   node browser.js
//
// Reads one JSON command per line on stdin ({"id": 1, "op": "click", "selector": "..."}) and answers each with one
// JSON line on stdout ({"id": 1, "ok": true, "value": ...} or {"id": 1, "ok": false, "error": "..."}), in order.
// The browser is the machine's own chromium (Debian's package; nothing is downloaded), started once with the flags a
// closed network needs; every "open" gets a fresh context (its own cookies and sessionStorage).

const { chromium } = require("playwright-core");
const readline = require("node:readline");

const EXECUTABLE = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const FLAGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
const TIMEOUT = 5000;

let browser = null;
let context = null;
let page = null;
let log = { pageErrors: [], consoleErrors: [], responses: [], dialogs: [] };

const first = (selector) => page.locator(selector).first();

function watch(newPage) {
  log = { pageErrors: [], consoleErrors: [], responses: [], dialogs: [] };
  newPage.on("pageerror", (error) => log.pageErrors.push(String(error)));
  newPage.on("console", (message) => {
    if (message.type() === "error") log.consoleErrors.push(message.text());
  });
  newPage.on("response", async (response) => {
    const url = new URL(response.url());
    if (!url.pathname.startsWith("/api/")) return;
    const headers = await response.request().allHeaders();
    log.responses.push({
      method: response.request().method(),
      path: url.pathname + url.search,
      status: response.status(),
      authorization: headers.authorization || null,
    });
  });
}

const OPS = {
  async open({ url, width = 1360, height = 860 }) {
    if (context) await context.close();
    context = await browser.newContext({ viewport: { width, height }, locale: "zh-CN", timezoneId: process.env.TZ || undefined });
    page = await context.newPage();
    page.setDefaultTimeout(TIMEOUT);
    watch(page);
    await page.goto(url);
  },
  goto: ({ url }) => page.goto(url),
  hash: ({ hash }) => page.evaluate((value) => (location.hash = value), hash),
  click: ({ selector }) => first(selector).click(),
  fill: ({ selector, value }) => first(selector).fill(value),
  select: ({ selector, value }) => first(selector).selectOption(value),
  check: ({ selector }) => first(selector).check(),
  // the next alert / confirm / prompt is accepted (or dismissed) and its message logged; unhandled ones are dismissed
  dialog: ({ accept = true }) => {
    page.once("dialog", (dialog) => {
      log.dialogs.push(dialog.message());
      return accept ? dialog.accept() : dialog.dismiss();
    });
  },
  wait: ({ selector, state = "visible", timeout = TIMEOUT }) => first(selector).waitFor({ state, timeout }),
  until: ({ expression, timeout = TIMEOUT }) => page.waitForFunction(expression, null, { timeout }).then(() => true),
  text: ({ selector }) => first(selector).textContent(),
  texts: ({ selector }) => page.locator(selector).allTextContents(),
  attr: ({ selector, name }) => first(selector).getAttribute(name),
  count: ({ selector }) => page.locator(selector).count(),
  eval: ({ expression }) => page.evaluate(expression),
  screenshot: ({ path, fullPage = true }) => page.screenshot({ path, fullPage }).then(() => path),
  log: () => log,
  async close() {
    if (context) await context.close();
    context = page = null;
  },
};

function answer(line) {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

async function main() {
  browser = await chromium.launch({ executablePath: EXECUTABLE, headless: true, args: FLAGS });
  answer({ id: 0, ok: true, value: browser.version() });
  let queue = Promise.resolve();
  const input = readline.createInterface({ input: process.stdin });
  input.on("line", (line) => {
    queue = queue.then(async () => {
      const { id, op, ...args } = JSON.parse(line);
      try {
        if (!OPS[op]) throw new Error(`unknown op ${op}`);
        const value = await OPS[op](args);
        answer({ id, ok: true, value: value === undefined ? null : value });
      } catch (error) {
        answer({ id, ok: false, error: String(error && error.message ? error.message : error) });
      }
    });
  });
  input.on("close", () => queue.then(() => browser.close()).then(() => process.exit(0)));
}

main().catch((error) => {
  answer({ id: 0, ok: false, error: String(error && error.stack ? error.stack : error) });
  process.exit(1);
});
