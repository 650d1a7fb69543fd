'use strict'
/*
 * Drives the inspector page in headless Chromium (the system's browser, through playwright-core)
 * for tests/e2e. Controlled like driver.js: one JSON object per line on stdin, one per line on
 * stdout.
 *
 *   command  {"id": n, "cmd": "<name>", ...args}
 *   reply    {"id": n, "ok": true, "result": <value>} | {"id": n, "ok": false, "error": "<message>"}
 *   event    {"event": "ready"} once at start, then {"event": "console"|"pageerror", ...}
 *
 * Commands (timeouts in ms):
 *   launch      [executablePath] (default $CHROMIUM or /usr/bin/chromium)
 *   goto        url
 *   fill        selector, value
 *   click       selector
 *   check       selector, checked (bool)
 *   select      selector, value
 *   text        selector                    -> textContent
 *   count       selector                    -> number of matches
 *   waitFor     selector, [state], [timeout]
 *   waitForText selector, text, [exact], [timeout]  -> textContent once it contains (or, exact,
 *                                           trimmed equals) text
 *   evaluate    expression                  -> the value of a JS expression in the page
 *   screenshot  path, [fullPage]
 *   requests                                -> every URL the page requested, WebSockets included
 *   exit
 */

const readline = require('readline')
const { chromium } = require('playwright-core')

const writeLine = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
for (const name of ['log', 'info', 'debug', 'trace', 'dir', 'table']) {
  console[name] = (...args) => console.error(...args)
}

// Root cannot use Chromium's sandbox; the rest keeps the browser from calling home.
const LAUNCH_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-dev-shm-usage',
]
const DEFAULT_TIMEOUT = 10000

let browser = null
let page = null
const requests = []

function needPage() {
  if (!page) throw new Error('no page: call launch first')
  return page
}

const commands = {
  async launch({ executablePath }) {
    browser = await chromium.launch({
      executablePath: executablePath || process.env.CHROMIUM || '/usr/bin/chromium',
      args: LAUNCH_ARGS,
      timeout: 30000,
    })
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } })
    page = await context.newPage()
    page.setDefaultTimeout(DEFAULT_TIMEOUT)
    page.on('request', (req) => requests.push(req.url()))
    page.on('websocket', (ws) => requests.push(ws.url()))
    page.on('console', (msg) => writeLine({ event: 'console', type: msg.type(), text: msg.text() }))
    page.on('pageerror', (err) => writeLine({ event: 'pageerror', message: String(err && err.message) }))
    return { version: browser.version() }
  },
  async goto({ url }) {
    const response = await needPage().goto(url, { waitUntil: 'load' })
    return { status: response ? response.status() : null }
  },
  async fill({ selector, value }) {
    await needPage().fill(selector, value)
  },
  async click({ selector }) {
    await needPage().click(selector)
  },
  async check({ selector, checked }) {
    await needPage().setChecked(selector, checked !== false)
  },
  async select({ selector, value }) {
    return needPage().selectOption(selector, value)
  },
  async text({ selector }) {
    return needPage().textContent(selector)
  },
  async count({ selector }) {
    return needPage().locator(selector).count()
  },
  async waitFor({ selector, state, timeout }) {
    await needPage().waitForSelector(selector, { state: state || 'visible', timeout: timeout || DEFAULT_TIMEOUT })
  },
  async waitForText({ selector, text, exact, timeout }) {
    const p = needPage()
    await p.waitForFunction(
      ([sel, wanted, whole]) => {
        const node = document.querySelector(sel)
        if (node === null) return false
        return whole ? node.textContent.trim() === wanted : node.textContent.includes(wanted)
      },
      [selector, text, Boolean(exact)],
      { timeout: timeout || DEFAULT_TIMEOUT, polling: 50 }
    )
    return p.textContent(selector)
  },
  async evaluate({ expression }) {
    return needPage().evaluate(expression)
  },
  async screenshot({ path, fullPage }) {
    await needPage().screenshot({ path, fullPage: fullPage !== false })
    return path
  },
  async requests() {
    return requests.slice()
  },
  async exit() {
    if (browser) await browser.close().catch(() => {})
    browser = null
    setImmediate(() => process.exit(0))
    return 'bye'
  },
}

const rl = readline.createInterface({ input: process.stdin })
rl.on('line', async (line) => {
  if (!line.trim()) return
  let msg
  try {
    msg = JSON.parse(line)
  } catch (err) {
    writeLine({ event: 'error', message: `bad command line: ${err.message}` })
    return
  }
  const { id, cmd, ...args } = msg
  const fn = commands[cmd]
  if (!fn) {
    writeLine({ id, ok: false, error: `unknown command ${cmd}` })
    return
  }
  try {
    const result = await fn(args)
    writeLine({ id, ok: true, result: result === undefined ? null : result })
  } catch (err) {
    writeLine({ id, ok: false, error: String((err && err.message) || err) })
  }
})
rl.on('close', async () => {
  if (browser) await browser.close().catch(() => {})
  process.exit(0)
})
process.on('unhandledRejection', (err) => writeLine({ event: 'error', message: String(err) }))

writeLine({ event: 'ready' })
