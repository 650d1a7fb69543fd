'use strict'
/*
 * Drives the official Supabase JavaScript clients (realtime-js, supabase-js) for the pytest suite.
 *
 * Protocol: one JSON object per line on stdin (a command) and on stdout (a reply or an event).
 * Nothing else is ever written to stdout; library logging goes to stderr.
 *
 *   command  {"id": <any>, "cmd": "<name>", ...args}
 *   reply    {"id": <same>, "ok": true, "result": <value>} | {"id": <same>, "ok": false, "error": "<message>"}
 *   event    {"event": "<kind>", ...}
 *
 * Commands run concurrently; every command gets exactly one reply, in completion order.
 * Binary values cross the pipe as {"__bytes_b64": "<base64>"}.
 * See tests/clients/drivers.py for the reference of every command and event.
 */

const readline = require('readline')

// ---------------------------------------------------------------------------------------------
// stdout is reserved for protocol lines: everything the libraries print goes to stderr.
const writeLine = (line) => process.stdout.write(line + '\n')
for (const name of ['log', 'info', 'debug', 'trace', 'dir', 'table']) {
  console[name] = (...args) => console.error(...args)
}

const WebSocket = require('ws')
const { RealtimeClient } = require('@supabase/realtime-js')
const { createClient } = require('@supabase/supabase-js')

// ---------------------------------------------------------------------------------------------
// JSON conversion

function bytesToB64(value) {
  if (value instanceof ArrayBuffer || value?.constructor?.name === 'ArrayBuffer') {
    return Buffer.from(new Uint8Array(value)).toString('base64')
  }
  return Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('base64')
}

function b64ToArrayBuffer(text) {
  const buf = Buffer.from(text, 'base64')
  // A small Buffer may be a view into a shared pool: copy out exactly its bytes.
  return buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength)
}

function toJson(value, depth = 0) {
  if (value === undefined) return null
  if (value === null || typeof value !== 'object') {
    if (typeof value === 'bigint') return value.toString()
    if (typeof value === 'function') return `[function ${value.name || 'anonymous'}]`
    return value
  }
  if (depth > 50) return '[too deep]'
  if (value instanceof ArrayBuffer || value?.constructor?.name === 'ArrayBuffer' || ArrayBuffer.isView(value)) {
    return { __bytes_b64: bytesToB64(value) }
  }
  if (value instanceof Error) return { name: value.name, message: value.message }
  if (Array.isArray(value)) return value.map((v) => toJson(v, depth + 1))
  const out = {}
  for (const [k, v] of Object.entries(value)) {
    if (v !== undefined) out[k] = toJson(v, depth + 1)
  }
  return out
}

// A payload arriving as {"__bytes_b64": "..."} becomes an ArrayBuffer; with binary: true a bare base64
// string does too.
function fromJson(value, binary) {
  if (binary && typeof value === 'string') return b64ToArrayBuffer(value)
  if (value && typeof value === 'object' && !Array.isArray(value)) {
    const keys = Object.keys(value)
    if (keys.length === 1 && keys[0] === '__bytes_b64') return b64ToArrayBuffer(value.__bytes_b64)
  }
  return value
}

function errorMessage(err) {
  if (err === undefined || err === null) return null
  if (typeof err === 'string') return err
  if (err instanceof Error) return err.message || err.name || String(err)
  if (typeof err === 'object') {
    if (typeof err.message === 'string') return err.message
    if (err.type === 'close' || err.code !== undefined) return `close ${err.code} ${err.reason ?? ''}`.trim()
    try {
      return JSON.stringify(toJson(err))
    } catch {
      return String(err)
    }
  }
  return String(err)
}

function emit(obj) {
  let line
  try {
    line = JSON.stringify(toJson(obj))
  } catch (e) {
    line = JSON.stringify({ event: 'error', kind: 'emit', message: errorMessage(e) })
  }
  writeLine(line)
}

// ---------------------------------------------------------------------------------------------
// State

/** name -> {name, kind, realtime, supabase, token} */
const clients = new Map()
/** channel handle -> {handle, client, channel, subscribed, left} (a left handle may be reused) */
const channels = new Map()

function getClient(name) {
  const entry = clients.get(name)
  if (!entry) throw new Error(`unknown client ${JSON.stringify(name)}`)
  return entry
}

function getChannel(handle) {
  const entry = channels.get(handle)
  if (!entry) throw new Error(`unknown channel ${JSON.stringify(handle)}`)
  return entry
}

function frameData(data, isBinary) {
  let buf
  if (typeof data === 'string') return { binary: false, text: data }
  if (Array.isArray(data)) buf = Buffer.concat(data.map((d) => Buffer.from(d)))
  else if (data instanceof ArrayBuffer) buf = Buffer.from(new Uint8Array(data))
  else if (ArrayBuffer.isView(data)) buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength)
  else buf = Buffer.from(String(data))
  return isBinary ? { binary: true, b64: buf.toString('base64') } : { binary: false, text: buf.toString('utf8') }
}

/** The ws class, or a subclass that reports every frame as a "frame" event. */
function makeTransport(clientName, tap) {
  if (!tap) return WebSocket
  return class TapWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols)
      emit({ event: 'frame', client: clientName, dir: 'connect', url: String(url) })
      this.on('message', (data, isBinary) => {
        emit({ event: 'frame', client: clientName, dir: 'in', ...frameData(data, isBinary) })
      })
    }

    send(data, ...rest) {
      const binary = typeof data !== 'string'
      emit({ event: 'frame', client: clientName, dir: 'out', ...frameData(data, binary) })
      return super.send(data, ...rest)
    }
  }
}

function waitForOpen(realtime, ms) {
  const socket = realtime.socketAdapter.getSocket()
  if (realtime.isConnected()) return Promise.resolve('open')
  return new Promise((resolve, reject) => {
    const refs = []
    const done = (fn, value) => {
      clearTimeout(timer)
      socket.off(refs)
      fn(value)
    }
    const timer = setTimeout(() => done(reject, new Error(`socket not open after ${ms} ms`)), ms)
    refs.push(socket.onOpen(() => done(resolve, 'open')))
    refs.push(
      socket.onClose((ev) =>
        done(reject, new Error(`socket closed before open: ${ev?.code ?? ''} ${ev?.reason ?? ''}`.trim()))
      )
    )
    refs.push(socket.onError((err) => done(reject, new Error(`socket error before open: ${errorMessage(err)}`))))
  })
}

// ---------------------------------------------------------------------------------------------
// Commands

const commands = {
  async ping() {
    return 'pong'
  },

  async connect(cmd) {
    const name = cmd.client ?? 'default'
    if (clients.has(name)) throw new Error(`client ${JSON.stringify(name)} already exists`)
    if (!cmd.url && !cmd.endpoint) throw new Error('connect needs url')
    const kind = cmd.kind ?? 'realtime-js'
    const options = { transport: makeTransport(name, !!cmd.tap) }
    if (cmd.vsn !== undefined) options.vsn = cmd.vsn
    if (cmd.timeout !== undefined) options.timeout = cmd.timeout
    if (cmd.heartbeatIntervalMs !== undefined) options.heartbeatIntervalMs = cmd.heartbeatIntervalMs
    if (cmd.logLevel !== undefined) options.logLevel = cmd.logLevel
    if (cmd.options) Object.assign(options, cmd.options)
    const entry = { name, kind, realtime: null, supabase: null, token: cmd.accessToken ?? null }
    const base = String(cmd.url ?? '').replace(/\/+$/, '')

    if (kind === 'realtime-js') {
      // endpoint: the client's base URL as is (it appends /websocket), e.g. ws://host:port/socket
      const endPoint = cmd.endpoint ?? base.replace(/^http/, 'ws') + '/realtime/v1'
      entry.realtime = new RealtimeClient(endPoint, {
        ...options,
        params: { apikey: cmd.apikey, ...(cmd.params ?? {}) },
      })
    } else if (kind === 'supabase-js') {
      const sbOptions = {
        realtime: { ...options, ...(cmd.params ? { params: cmd.params } : {}) },
        auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
      }
      // With an access token the client runs in third-party-auth mode: the callback is the token source.
      if (cmd.accessToken) sbOptions.accessToken = async () => entry.token
      entry.supabase = createClient(base, cmd.apikey, sbOptions)
      entry.realtime = entry.supabase.realtime
    } else {
      throw new Error(`unknown client kind ${JSON.stringify(kind)}`)
    }
    clients.set(name, entry)

    const rt = entry.realtime
    const socket = rt.socketAdapter.getSocket()
    socket.onOpen(() => emit({ event: 'socket', client: name, state: 'open' }))
    socket.onClose((ev) =>
      emit({
        event: 'socket',
        client: name,
        state: 'close',
        code: ev?.code ?? null,
        reason: ev?.reason ?? null,
        wasClean: ev?.wasClean ?? null,
      })
    )
    socket.onError((err) => emit({ event: 'socket', client: name, state: 'error', error: errorMessage(err) }))
    if (cmd.heartbeatEvents) {
      rt.onHeartbeat((status, latency) =>
        emit({ event: 'heartbeat', client: name, status, latency: latency ?? null })
      )
    }

    if (cmd.accessToken) await rt.setAuth(cmd.accessToken)
    const result = { client: name, endpoint: rt.endpointURL(), vsn: rt.vsn, state: 'lazy' }
    if (cmd.lazy) return result
    rt.connect()
    result.state = await waitForOpen(rt, cmd.openTimeout ?? 5000)
    return result
  },

  async channel(cmd) {
    const entry = getClient(cmd.client ?? 'default')
    if (!cmd.name) throw new Error('channel needs name')
    const handle = cmd.channel ?? cmd.name
    if (channels.has(handle) && !channels.get(handle).left) {
      throw new Error(`channel ${JSON.stringify(handle)} already exists`)
    }
    const params = { config: cmd.config ?? {} }
    const owner = entry.supabase ?? entry.realtime
    const ch = owner.channel(cmd.name, params)
    for (const ev of cmd.events ?? ['*']) {
      ch.on('broadcast', { event: ev }, (msg) => emit({ event: 'broadcast', channel: handle, filter: ev, msg }))
    }
    ch.on('system', {}, (msg) => emit({ event: 'system', channel: handle, msg }))
    for (const filter of cmd.postgresChanges ?? []) {
      ch.on('postgres_changes', filter, (msg) => emit({ event: 'postgres_changes', channel: handle, msg }))
    }
    if (cmd.presence) {
      ch.on('presence', { event: 'sync' }, () =>
        emit({ event: 'presence', channel: handle, kind: 'sync', state: ch.presenceState() })
      )
      ch.on('presence', { event: 'join' }, (msg) => emit({ event: 'presence', channel: handle, kind: 'join', msg }))
      ch.on('presence', { event: 'leave' }, (msg) =>
        emit({ event: 'presence', channel: handle, kind: 'leave', msg })
      )
    }
    channels.set(handle, { handle, client: entry.name, channel: ch, subscribed: false, left: false })
    return { channel: handle, topic: ch.topic }
  },

  subscribe(cmd) {
    const entry = getChannel(cmd.channel)
    if (entry.subscribed) throw new Error(`channel ${JSON.stringify(cmd.channel)} was already subscribed`)
    entry.subscribed = true
    const ch = entry.channel
    const timeout = Number(cmd.timeout ?? ch.timeout) || 10000
    return new Promise((resolve, reject) => {
      let first = true
      const guard = setTimeout(() => {
        if (first) {
          first = false
          reject(new Error(`subscribe callback not called within ${timeout + 3000} ms`))
        }
      }, timeout + 3000)
      const callback = (status, err) => {
        const error = errorMessage(err)
        if (first) {
          first = false
          clearTimeout(guard)
          resolve({ status, error })
        } else {
          emit({ event: 'status', channel: entry.handle, status, error })
        }
      }
      if (cmd.timeout !== undefined) ch.subscribe(callback, cmd.timeout)
      else ch.subscribe(callback)
    })
  },

  async send(cmd) {
    const { channel } = getChannel(cmd.channel)
    const args = {
      type: cmd.type ?? 'broadcast',
      event: cmd.event,
      payload: fromJson(cmd.payload, !!cmd.binary),
      ...(cmd.extra ?? {}),
    }
    return await channel.send(args, cmd.timeout !== undefined ? { timeout: cmd.timeout } : {})
  },

  async httpSend(cmd) {
    const { channel } = getChannel(cmd.channel)
    const opts = cmd.timeout !== undefined ? { timeout: cmd.timeout } : {}
    return await channel.httpSend(cmd.event, fromJson(cmd.payload, !!cmd.binary), opts)
  },

  async track(cmd) {
    const { channel } = getChannel(cmd.channel)
    return await channel.track(cmd.payload ?? {}, cmd.timeout !== undefined ? { timeout: cmd.timeout } : {})
  },

  async untrack(cmd) {
    const { channel } = getChannel(cmd.channel)
    return await channel.untrack(cmd.timeout !== undefined ? { timeout: cmd.timeout } : {})
  },

  async presenceState(cmd) {
    return getChannel(cmd.channel).channel.presenceState()
  },

  async setAuth(cmd) {
    const entry = getClient(cmd.client ?? 'default')
    const token = cmd.token ?? null
    if (entry.supabase && entry.token !== null) entry.token = token ?? entry.token
    await entry.realtime.setAuth(token)
    return entry.realtime.accessTokenValue ?? null
  },

  async unsubscribe(cmd) {
    const entry = getChannel(cmd.channel)
    entry.left = true
    return await entry.channel.unsubscribe(cmd.timeout)
  },

  async removeChannel(cmd) {
    const entry = getChannel(cmd.channel)
    const client = getClient(entry.client)
    entry.left = true
    return await (client.supabase ?? client.realtime).removeChannel(entry.channel)
  },

  async info(cmd) {
    const entry = getClient(cmd.client ?? 'default')
    const rt = entry.realtime
    const chans = {}
    for (const c of channels.values()) {
      if (c.client === entry.name) chans[c.handle] = { topic: c.channel.topic, state: c.channel.state }
    }
    return {
      kind: entry.kind,
      endpoint: rt.endpointURL(),
      vsn: rt.vsn,
      connectionState: rt.connectionState(),
      accessToken: rt.accessTokenValue ?? null,
      channels: chans,
    }
  },

  async disconnect(cmd) {
    const name = cmd.client ?? 'default'
    const entry = getClient(name)
    clients.delete(name)
    for (const [handle, c] of channels) if (c.client === name) channels.delete(handle)
    return await entry.realtime.disconnect(cmd.code, cmd.reason)
  },
}

// ---------------------------------------------------------------------------------------------
// Main loop

let exiting = false

async function shutdown(code) {
  if (exiting) return
  exiting = true
  const all = [...clients.values()]
  clients.clear()
  channels.clear()
  await Promise.race([
    Promise.allSettled(all.map((c) => c.realtime.disconnect())),
    new Promise((resolve) => setTimeout(resolve, 2000)),
  ])
  process.exit(code)
}

async function handle(line) {
  let cmd
  try {
    cmd = JSON.parse(line)
  } catch (e) {
    emit({ id: null, ok: false, error: `invalid JSON command: ${errorMessage(e)}` })
    return
  }
  const id = cmd?.id ?? null
  if (!cmd || typeof cmd !== 'object' || typeof cmd.cmd !== 'string') {
    emit({ id, ok: false, error: 'a command needs a "cmd" string' })
    return
  }
  if (cmd.cmd === 'exit') {
    emit({ id, ok: true, result: 'bye' })
    await shutdown(0)
    return
  }
  const fn = commands[cmd.cmd]
  if (!fn) {
    emit({ id, ok: false, error: `unknown command ${JSON.stringify(cmd.cmd)}` })
    return
  }
  try {
    const result = await fn(cmd)
    emit({ id, ok: true, result: result === undefined ? null : result })
  } catch (e) {
    emit({ id, ok: false, error: errorMessage(e) ?? 'error' })
  }
}

process.on('unhandledRejection', (reason) => {
  emit({ event: 'error', kind: 'unhandledRejection', message: errorMessage(reason) })
})
process.on('uncaughtException', (err) => {
  emit({ event: 'error', kind: 'uncaughtException', message: errorMessage(err), stack: err?.stack ?? null })
})
process.stdout.on('error', () => process.exit(1))

const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity })
rl.on('line', (line) => {
  if (line.trim() !== '') handle(line)
})
rl.on('close', () => shutdown(0))
emit({ event: 'ready', pid: process.pid, node: process.version })
