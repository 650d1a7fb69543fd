'use strict'
/*
 * pg-realtime inspector: one browser WebSocket speaking the Phoenix protocol that the
 * Supabase clients speak (vsn 1.0.0 JSON objects, or vsn 2.0.0 JSON arrays plus the binary
 * user-broadcast frames), and a poll of /api/inspector/stats.
 */
;(() => {
  const config = JSON.parse(document.getElementById('inspector-config').textContent)
  const $ = (id) => document.getElementById(id)

  const HEARTBEAT_MS = 25000
  const REPLY_TIMEOUT_MS = 10000
  const STATS_MS = 1000
  const MAX_LOG = 500
  const KIND_USER_BROADCAST_PUSH = 3
  const KIND_USER_BROADCAST = 4

  let ws = null
  let vsn = '2.0.0'
  let refCounter = 0
  let heartbeatTimer = null
  const pending = new Map() // ref -> {resolve, timer}
  const channels = new Map() // "realtime:<topic>" -> {subtopic, private, joinRef, state, self}
  const utf8 = new TextEncoder()
  const utf8Decoder = new TextDecoder()

  // ---- helpers ---------------------------------------------------------------------------
  const nextRef = () => String(++refCounter)
  const currentKey = () => $('key').value.trim()

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag)
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === 'class') node.className = value
      else node.setAttribute(name, value)
    }
    for (const child of children) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)))
    }
    return node
  }

  function setStatus(state, text) {
    const status = $('status')
    status.dataset.state = state
    status.textContent = text || state
    const open = state === 'connected'
    $('connect').disabled = state === 'connecting' || open
    $('disconnect').disabled = !(open || state === 'connecting')
  }

  // ---- the message log -------------------------------------------------------------------
  let logCount = 0
  function log(kind, topic, event, payload, note) {
    const list = $('log')
    const time = new Date().toISOString().slice(11, 23)
    const body = payload === undefined ? '' : typeof payload === 'string' ? payload : JSON.stringify(payload)
    const item = el(
      'li',
      { class: `entry ${kind}`, 'data-kind': kind, 'data-topic': topic || '', 'data-event': event || '' },
      el('span', { class: 'time' }, time),
      el('span', { class: 'kind' }, kind),
      el('span', { class: 'topic' }, topic || ''),
      el('span', { class: 'event' }, event || ''),
      el('code', { class: 'payload' }, body),
      el('span', { class: 'note', title: note || '' }, note || '')
    )
    list.prepend(item)
    while (list.childElementCount > MAX_LOG) list.lastElementChild.remove()
    logCount += 1
    $('log-count').textContent = `${logCount}`
  }

  // ---- encoding --------------------------------------------------------------------------
  function encodeText(joinRef, ref, topic, event, payload) {
    if (vsn === '1.0.0') return JSON.stringify({ topic, event, payload, ref, join_ref: joinRef })
    return JSON.stringify([joinRef, ref, topic, event, payload])
  }

  // vsn 2.0.0 clients send broadcasts as a binary "user broadcast push" (kind 3), as realtime-js does.
  function encodeUserBroadcastPush(joinRef, ref, topic, event, payload) {
    const fields = [joinRef || '', ref, topic, event, ''].map((s) => utf8.encode(s))
    const body = utf8.encode(JSON.stringify(payload))
    if (fields.some((f) => f.length > 255)) return null
    const header = [KIND_USER_BROADCAST_PUSH, ...fields.map((f) => f.length), 1]
    const out = new Uint8Array(header.length + fields.reduce((n, f) => n + f.length, 0) + body.length)
    out.set(header, 0)
    let offset = header.length
    for (const part of [...fields, body]) {
      out.set(part, offset)
      offset += part.length
    }
    return out.buffer
  }

  function decode(data) {
    if (typeof data === 'string') {
      const value = JSON.parse(data)
      if (Array.isArray(value)) {
        const [joinRef, ref, topic, event, payload] = value
        return { joinRef, ref, topic, event, payload }
      }
      return { joinRef: value.join_ref, ref: value.ref, topic: value.topic, event: value.event, payload: value.payload }
    }
    const bytes = new Uint8Array(data)
    if (bytes[0] !== KIND_USER_BROADCAST) throw new Error(`unexpected binary frame kind ${bytes[0]}`)
    const [topicLen, eventLen, metaLen, encoding] = bytes.slice(1, 5)
    let offset = 5
    const take = (n) => bytes.slice(offset, (offset += n))
    const topic = utf8Decoder.decode(take(topicLen))
    const event = utf8Decoder.decode(take(eventLen))
    const metaText = utf8Decoder.decode(take(metaLen))
    const rest = bytes.slice(offset)
    const payload = { type: 'broadcast', event }
    payload.payload = encoding === 1 ? JSON.parse(utf8Decoder.decode(rest)) : { binary_bytes: rest.length }
    if (metaText) payload.meta = JSON.parse(metaText)
    return { joinRef: null, ref: null, topic, event: 'broadcast', payload }
  }

  // ---- the socket ------------------------------------------------------------------------
  function send(frame) {
    if (!ws || ws.readyState !== WebSocket.OPEN) throw new Error('not connected')
    ws.send(frame)
  }

  function push(topic, event, payload, joinRef, binary) {
    const ref = nextRef()
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        pending.delete(ref)
        resolve({ status: 'timeout', response: {} })
      }, REPLY_TIMEOUT_MS)
      pending.set(ref, { resolve, timer })
      try {
        const frame = binary ? binary(joinRef, ref) : null
        send(frame || encodeText(joinRef, ref, topic, event, payload))
      } catch (err) {
        clearTimeout(timer)
        pending.delete(ref)
        resolve({ status: 'error', response: { reason: err.message } })
      }
    })
  }

  function connect() {
    const key = currentKey()
    if (!key) {
      setStatus('disconnected', 'a key is needed to connect')
      return Promise.resolve(false)
    }
    if (ws && (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING)) {
      return Promise.resolve(ws.readyState === WebSocket.OPEN)
    }
    vsn = $('vsn').value
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws'
    const url = `${scheme}://${location.host}${config.websocketPath}?apikey=${encodeURIComponent(key)}&vsn=${vsn}`
    setStatus('connecting', 'connecting…')
    const socket = new WebSocket(url)
    socket.binaryType = 'arraybuffer'
    ws = socket
    return new Promise((resolve) => {
      socket.addEventListener('open', () => {
        setStatus('connected', `connected (vsn ${vsn})`)
        heartbeatTimer = setInterval(() => {
          try {
            send(encodeText(null, nextRef(), 'phoenix', 'heartbeat', {}))
          } catch (_) {}
        }, HEARTBEAT_MS)
        resolve(true)
      })
      socket.addEventListener('message', (ev) => onFrame(ev.data))
      socket.addEventListener('close', (ev) => {
        if (ws === socket) {
          ws = null
          clearInterval(heartbeatTimer)
          for (const { resolve: done, timer } of pending.values()) {
            clearTimeout(timer)
            done({ status: 'error', response: { reason: 'socket closed' } })
          }
          pending.clear()
          for (const channel of channels.values()) channel.state = 'closed'
          renderChannels()
          const detail = ev.code === 1006 ? 'could not connect: is the key valid?' : `closed (${ev.code}${ev.reason ? ': ' + ev.reason : ''})`
          setStatus('disconnected', detail)
        }
        resolve(false)
      })
    })
  }

  function disconnect() {
    if (ws) ws.close(1000)
  }

  function onFrame(data) {
    let msg
    try {
      msg = decode(data)
    } catch (err) {
      log('error', '', '', String(err.message || err), 'undecodable frame')
      return
    }
    if (msg.event === 'phx_reply' && msg.ref != null && pending.has(msg.ref)) {
      const { resolve, timer } = pending.get(msg.ref)
      clearTimeout(timer)
      pending.delete(msg.ref)
      resolve(msg.payload || {})
      return
    }
    if (msg.topic === 'phoenix') return
    const channel = channels.get(msg.topic)
    const subtopic = channel ? channel.subtopic : String(msg.topic || '').replace(/^realtime:/, '')
    switch (msg.event) {
      case 'broadcast': {
        const p = msg.payload || {}
        const note = p.meta && p.meta.id ? `id ${p.meta.id}` : ''
        log('broadcast', subtopic, p.event, p.payload, note)
        break
      }
      case 'system':
        log('system', subtopic, msg.payload && msg.payload.status, msg.payload)
        break
      case 'phx_close':
      case 'phx_error':
        if (channel && (msg.joinRef == null || msg.joinRef === channel.joinRef)) {
          channel.state = msg.event === 'phx_close' ? 'closed' : 'errored'
          renderChannels()
          log('system', subtopic, msg.event, msg.payload)
        }
        break
      case 'presence_state':
      case 'presence_diff':
        break
      default:
        log('other', subtopic, msg.event, msg.payload)
    }
  }

  // ---- channels --------------------------------------------------------------------------
  async function join(subtopic, isPrivate, token, self) {
    const topic = `realtime:${subtopic}`
    const existing = channels.get(topic)
    if (existing && existing.state === 'joined') await leave(topic)
    if (!(await connect())) return
    const joinRef = nextRef()
    const channel = { subtopic, private: isPrivate, joinRef, state: 'joining', self }
    channels.set(topic, channel)
    renderChannels()
    const payload = {
      config: {
        broadcast: { ack: true, self },
        presence: { key: '', enabled: false },
        postgres_changes: [],
        private: isPrivate,
      },
      access_token: token || currentKey(),
    }
    const ref = joinRef
    const reply = await new Promise((resolve) => {
      const timer = setTimeout(() => {
        pending.delete(ref)
        resolve({ status: 'timeout', response: {} })
      }, REPLY_TIMEOUT_MS)
      pending.set(ref, { resolve, timer })
      try {
        send(encodeText(joinRef, ref, topic, 'phx_join', payload))
      } catch (err) {
        clearTimeout(timer)
        pending.delete(ref)
        resolve({ status: 'error', response: { reason: err.message } })
      }
    })
    if (channels.get(topic) !== channel) return
    if (reply.status === 'ok') {
      channel.state = 'joined'
      log('system', subtopic, 'joined', isPrivate ? 'private channel' : 'public channel')
    } else {
      channel.state = 'refused'
      channel.reason = (reply.response && reply.response.reason) || reply.status
      log('error', subtopic, 'join refused', channel.reason)
    }
    renderChannels()
  }

  async function leave(topic) {
    const channel = channels.get(topic)
    if (!channel) return
    channels.delete(topic)
    renderChannels()
    if (ws && ws.readyState === WebSocket.OPEN && channel.state === 'joined') {
      await push(topic, 'phx_leave', {}, channel.joinRef)
      log('system', channel.subtopic, 'left', '')
    }
  }

  function renderChannels() {
    const list = $('channels')
    list.replaceChildren()
    const select = $('send-channel')
    const selected = select.value
    select.replaceChildren()
    for (const [topic, channel] of channels) {
      const button = el('button', { type: 'button', class: 'small-button' }, 'Leave')
      button.addEventListener('click', () => leave(topic))
      const label = channel.state === 'refused' ? `refused: ${channel.reason}` : channel.state
      list.append(
        el(
          'li',
          { 'data-topic': channel.subtopic, 'data-state': channel.state },
          el('strong', {}, channel.subtopic),
          el('span', { class: 'muted' }, channel.private ? ' private ' : ' public '),
          el('span', { class: `state ${channel.state}` }, label),
          ' ',
          button
        )
      )
      if (channel.state === 'joined') {
        select.append(el('option', { value: topic }, `${channel.subtopic}${channel.private ? ' (private)' : ''}`))
      }
    }
    if ([...select.options].some((o) => o.value === selected)) select.value = selected
    $('send').disabled = select.options.length === 0
  }

  async function broadcast(topic, event, payload) {
    const channel = channels.get(topic)
    if (!channel || channel.state !== 'joined') return { status: 'error', response: { reason: 'not joined' } }
    const body = { type: 'broadcast', event, payload }
    const binary = vsn === '2.0.0' ? (joinRef, ref) => encodeUserBroadcastPush(joinRef, ref, topic, event, payload) : null
    return push(topic, 'broadcast', body, channel.joinRef, binary)
  }

  // ---- server stats ----------------------------------------------------------------------
  function fmt(n) {
    if (typeof n !== 'number') return '–'
    return Number.isInteger(n) ? n.toLocaleString('en-US') : n.toFixed(1)
  }

  async function pollStats() {
    try {
      const headers = {}
      const key = currentKey()
      if (key && !config.demo) headers.Authorization = `Bearer ${key}`
      const response = await fetch(config.statsPath, { headers, cache: 'no-store' })
      if (response.ok) renderStats(await response.json())
    } catch (_) {
      $('stat-stream').textContent = 'unreachable'
    } finally {
      setTimeout(pollStats, STATS_MS)
    }
  }

  function renderCluster(c) {
    $('stat-bus').textContent = c.bus.up ? 'up' : c.bus.reason || 'down'
    $('stat-bus').dataset.live = String(c.bus.up)
    const rows = $('sidecars').tBodies[0]
    rows.replaceChildren()
    if (!c.sidecars) {
      $('sidecars-note').textContent = `${fmt(c.size)} sidecars; names and addresses are shown to a service_role key.`
      return
    }
    $('sidecars-note').textContent = `${fmt(c.size)} sidecars serve this database.`
    for (const sc of c.sidecars) {
      rows.append(
        el(
          'tr',
          {},
          el('td', {}, sc.name + (sc.self ? ' (this one)' : '')),
          el('td', {}, sc.address),
          el('td', {}, new Date(sc.started_at * 1000).toISOString())
        )
      )
    }
  }

  function renderStats(s) {
    $('stat-sockets').textContent = fmt(s.sockets)
    $('stat-channels').textContent = fmt(s.channels)
    $('stat-mps').textContent = fmt(s.messages_per_second)
    $('stat-dps').textContent = fmt(s.deliveries_per_second)
    $('stat-total').textContent = fmt(s.messages_in.total)
    $('stat-stream').textContent = s.stream.live ? 'live' : s.stream.reason || 'down'
    $('stat-stream').dataset.live = String(s.stream.live)
    const m = s.messages_in
    $('stat-breakdown').textContent =
      `in: ${fmt(m.database || 0)} from the database, ${fmt(m.client || 0)} from clients, ` +
      `${fmt(m.rest || 0)} over REST, ${fmt(m.bus || 0)} from other sidecars; ` +
      `${fmt(s.deliveries.total)} deliveries; up ${fmt(Math.round(s.uptime_s))} s`
    renderCluster(s.cluster)
    const topics = $('topics').tBodies[0]
    const sockets = $('sockets').tBodies[0]
    topics.replaceChildren()
    sockets.replaceChildren()
    renderNearMisses(s)
    if (!s.detailed) {
      $('topics-note').textContent = 'Topic names and sockets are shown to a service_role key.'
      return
    }
    $('topics-note').textContent = s.topics.length ? '' : 'No channel is joined.'
    for (const t of s.topics) {
      topics.append(
        el(
          'tr',
          { 'data-topic': t.topic },
          el('td', {}, t.topic),
          el('td', {}, t.private ? 'private' : 'public'),
          el('td', {}, fmt(t.subscribers)),
          el('td', {}, t.presences === null || t.presences === undefined ? '–' : fmt(t.presences))
        )
      )
    }
    s.socket_list.forEach((sock, i) => {
      const names = sock.channels.map((c) => c.topic + (c.private ? ' (private)' : '')).join(', ')
      sockets.append(
        el(
          'tr',
          {},
          el('td', {}, i + 1),
          el('td', {}, sock.vsn),
          el('td', {}, sock.role || ''),
          el('td', {}, names),
          el('td', {}, `${fmt(sock.queued_bytes)} B`)
        )
      )
    })
  }

  // Per topic, the latest near-miss of each cause (the server keeps them; payloads never come here).
  function renderNearMisses(s) {
    const body = $('near-misses').tBodies[0]
    body.replaceChildren()
    const note = $('near-misses-note')
    if (!s.diagnostics) {
      note.textContent = 'Diagnostics are off (--no-diagnostics).'
      return
    }
    if (!s.detailed) {
      note.textContent = 'Near misses are shown to a service_role key.'
      return
    }
    const rows = [...s.near_misses].sort((a, b) => a.topic.localeCompare(b.topic) || b.at - a.at)
    note.textContent = rows.length ? '' : 'No message has missed a subscriber.'
    for (const n of rows) {
      body.append(
        el(
          'tr',
          { 'data-topic': n.topic, 'data-cause': n.cause, class: 'near-miss' },
          el('td', {}, n.topic),
          el('td', {}, el('code', {}, n.cause)),
          el('td', {}, el('div', {}, n.text), el('div', { class: 'fix' }, n.fix)),
          el('td', {}, fmt(n.count)),
          el('td', {}, new Date(n.at * 1000).toLocaleTimeString())
        )
      )
    }
  }

  // ---- wiring ----------------------------------------------------------------------------
  $('connect-form').addEventListener('submit', (ev) => {
    ev.preventDefault()
    connect()
  })
  $('disconnect').addEventListener('click', disconnect)
  $('join-form').addEventListener('submit', (ev) => {
    ev.preventDefault()
    const subtopic = $('join-topic').value.trim()
    if (!subtopic) return
    join(subtopic, $('join-private').checked, $('join-token').value.trim(), $('join-self').checked)
  })
  $('send-form').addEventListener('submit', async (ev) => {
    ev.preventDefault()
    const status = $('send-status')
    let payload
    try {
      payload = JSON.parse($('send-payload').value)
    } catch (err) {
      status.textContent = `payload is not JSON: ${err.message}`
      return
    }
    if (payload === null || typeof payload !== 'object' || Array.isArray(payload)) {
      status.textContent = 'payload must be a JSON object'
      return
    }
    const topic = $('send-channel').value
    const event = $('send-event').value.trim()
    status.textContent = 'sending…'
    const reply = await broadcast(topic, event, payload)
    const channel = channels.get(topic)
    if (reply.status === 'ok') {
      status.textContent = 'sent'
      if (channel && !channel.self) log('sent', channel.subtopic, event, payload, 'from this page')
    } else if (reply.status === 'timeout') {
      // A private channel whose write policy refuses drops the message without a reply.
      status.textContent = 'no acknowledgement (refused by a write policy?)'
    } else {
      status.textContent = `not sent: ${JSON.stringify(reply.response)}`
    }
  })
  $('clear').addEventListener('click', () => {
    $('log').replaceChildren()
    logCount = 0
    $('log-count').textContent = '0'
  })

  // The page's state, for people poking at it from the browser console.
  window.inspector = { config, channels, connect, disconnect, join, leave, broadcast }

  renderChannels()
  pollStats()
  if (currentKey()) connect()
})()
