#!/usr/bin/env node
// An example turnproof driver: the durable turn store contract on postgres.js (npm
// `postgres`) with a pool of connections, speaking the JSON-lines driver protocol
// (docs/driver-protocol.md) on stdin/stdout. It is examples/node-driver/driver.js on
// another client, chosen for its wire habits: a pool, a ping at connect, named prepared
// statements, and describe-first (Parse/Describe/Flush, then Bind/Execute/Sync) the
// first time a query runs on a connection.
//
// It follows the reference implementation (reference_impl/store.py) rule for rule:
// - every operation is one SQL statement wherever the semantics allow, so the
//   database alone decides every race (no read-then-write here);
// - each statement is its own transaction (no BEGIN), so an operation that
//   answered has committed and one cut short committed nothing;
// - values are always bound parameters;
// - every time that decides anything is the database clock (now());
// - every read and write is scoped by workspace_id.
//
// One process serves one `install` or one connected store (one pool), then exits.
//
// `node driver.js --broken read-then-write` is a deliberately broken variant: append_step
// reads the row's status, then writes without the status guard (MSG-4 fails it).
'use strict'

const readline = require('node:readline')
const LosslessJSON = require('lossless-json')
const postgres = require('postgres')

const PROTOCOL_VERSION = 1
const BROKEN_AT = process.argv.indexOf('--broken')
const BROKEN = BROKEN_AT === -1 ? null : process.argv[BROKEN_AT + 1]
if (BROKEN !== null && BROKEN !== 'read-then-write') {
  process.stderr.write(
    `postgres-js-driver: unknown --broken variant ${BROKEN}; the one variant is read-then-write\n`)
  process.exit(2)
}
const IMPLEMENTATION = BROKEN ? `postgres-js-example-broken-${BROKEN}` : 'postgres-js-example'
const POOL_SIZE = 10
// `network`: every pooled connection keeps the DSN's application_name, so the harness
// can find, gate and cut them all. `process`: the driver is a process of its own whose every write
// is one autocommit statement, so killing it mid-turn loses nothing that was answered.
const CAPABILITIES = ['turns', 'streaming', 'usage', 'sweep', 'runs', 'workspaces', 'network', 'process']

const TERMINAL_MESSAGE_STATUSES = ['completed', 'error', 'aborted']
const TERMINAL_RUN_STATUSES = ['succeeded', 'failed', 'aborted']
const NO_TEXT_PART = { type: 'status', text: '(no text response)' }
const ONE_ACTIVE_RUN_INDEX = 'runs_one_active_per_chat'

// The new updated_at of a message write: the database clock, and strictly later than
// before even if two writes share a now() (MSG-5).
const BUMP_UPDATED_AT = "greatest(now(), updated_at + interval '1 microsecond')"

const MESSAGE_COLUMNS =
  'id, chat_id, workspace_id, role, turn_id, status, content, parts, created_at, updated_at'
const RUN_COLUMNS =
  'id, chat_id, workspace_id, status, trigger, assistant_message_id, step_count,' +
  ' stop_requested, created_at, updated_at, finished_at'
const USAGE_COLUMNS =
  'message_id, prompt_tokens, completion_tokens, total_tokens, cost_micros, model, created_at'
const USAGE_FIELDS = ['prompt_tokens', 'completion_tokens', 'total_tokens', 'cost_micros', 'model']

// The reference schema (reference_impl/schema.py), as plain DDL. The invariants live in
// the database: one row per (chat, turn, role), one usage row per message, one active
// run per chat, each a partial unique index.
const SCHEMA = `
SELECT pg_advisory_xact_lock(hashtext('turnproof.install'));
CREATE TABLE IF NOT EXISTS chats (
  id TEXT PRIMARY KEY DEFAULT gen_random_uuid()::text,
  workspace_id TEXT NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS messages (
  id TEXT PRIMARY KEY DEFAULT gen_random_uuid()::text,
  chat_id TEXT NOT NULL REFERENCES chats (id),
  workspace_id TEXT NOT NULL,
  role TEXT NOT NULL CONSTRAINT messages_role CHECK (role IN ('user', 'assistant')),
  turn_id TEXT,
  status TEXT CONSTRAINT messages_status
    CHECK (status IN ('streaming', 'completed', 'error', 'aborted')),
  content TEXT NOT NULL DEFAULT '',
  parts JSONB NOT NULL DEFAULT '[]'::jsonb,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_one_per_turn
  ON messages (chat_id, turn_id, role) WHERE turn_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_by_chat ON messages (chat_id, created_at);
CREATE INDEX IF NOT EXISTS messages_streaming_by_age
  ON messages (updated_at) WHERE status = 'streaming';
CREATE TABLE IF NOT EXISTS usage (
  id TEXT PRIMARY KEY DEFAULT gen_random_uuid()::text,
  message_id TEXT REFERENCES messages (id),
  prompt_tokens BIGINT NOT NULL,
  completion_tokens BIGINT NOT NULL,
  total_tokens BIGINT NOT NULL,
  cost_micros BIGINT NOT NULL,
  model TEXT NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS usage_one_per_message
  ON usage (message_id) WHERE message_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS runs (
  id TEXT PRIMARY KEY DEFAULT gen_random_uuid()::text,
  seq BIGINT GENERATED BY DEFAULT AS IDENTITY,
  chat_id TEXT NOT NULL REFERENCES chats (id),
  workspace_id TEXT NOT NULL,
  status TEXT NOT NULL CONSTRAINT runs_status
    CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'aborted')),
  trigger TEXT NOT NULL,
  assistant_message_id TEXT REFERENCES messages (id),
  step_count INTEGER NOT NULL DEFAULT 0,
  stop_requested BOOLEAN NOT NULL DEFAULT false,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  finished_at TIMESTAMPTZ
);
CREATE UNIQUE INDEX IF NOT EXISTS ${ONE_ACTIVE_RUN_INDEX}
  ON runs (chat_id) WHERE status IN ('pending', 'running');
CREATE INDEX IF NOT EXISTS runs_by_chat ON runs (chat_id, seq);
CREATE INDEX IF NOT EXISTS runs_active_by_age
  ON runs (updated_at) WHERE status IN ('pending', 'running');
`

// --- values from PostgreSQL ---------------------------------------------------------

// JSON numbers exactly (MSG-10): JSON.parse reads every number as a double, which turns
// 9007199254740993 into 9007199254740992. A number of at most 15 significant digits and
// an exponent below 100 is exactly a double, so text without a longer run of digits or a
// three-digit exponent is read by JSON.parse (fast). Any other text goes through
// lossless-json, which reads a number a double cannot hold as a LosslessNumber, its JSON
// text, written back as that text. Every JSON this driver reads or writes goes through
// these two: protocol lines, parts sent to and read from jsonb.
const MAYBE_INEXACT = /[0-9.]{16,}|[eE][+-]?[0-9]{3}/
const parseNumber = (text) =>
  LosslessJSON.isSafeNumber(text) ? parseFloat(text) : new LosslessJSON.LosslessNumber(text)

function parseJson (text) {
  return MAYBE_INEXACT.test(text) ? LosslessJSON.parse(text, null, parseNumber) : JSON.parse(text)
}

function toJson (value) {
  let exact = true
  const text = JSON.stringify(value, (key, v) => {
    if (LosslessJSON.isLosslessNumber(v)) exact = false
    return v
  })
  return exact ? text : LosslessJSON.stringify(value)
}

// bigint arrives as text (it may not fit a JS number); ours always fit.
function parseBigint (text) {
  const value = Number(text)
  if (!Number.isSafeInteger(value)) throw new Error(`bigint ${text} does not fit a JS number`)
  return value
}

// timestamptz as an ISO 8601 string with its offset and all six fractional digits: a JS
// Date would drop the microseconds, and with them the strict order of updated_at (MSG-5).
const TIMESTAMPTZ = /^(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d(?:\.\d+)?)([+-]\d\d)(?::(\d\d))?(?::(\d\d))?$/
function parseTimestamptz (text) {
  const m = TIMESTAMPTZ.exec(text)
  if (!m) throw new Error(`unexpected timestamptz text ${JSON.stringify(text)}`)
  const [, date, time, hours, minutes = '00', seconds] = m
  return `${date}T${time}${hours}:${minutes}${seconds ? ':' + seconds : ''}`
}

// postgres.js serializes a json/jsonb parameter with JSON.stringify once it learned the
// parameter's type (describe-first); ours are JSON text already, so they pass as they are.
const TYPES = {
  int8: { to: 20, from: [20], serialize: (x) => '' + x, parse: parseBigint },
  timestamptz: { to: 1184, from: [1184], serialize: (x) => x, parse: parseTimestamptz },
  jsontext: { to: 3802, from: [114, 3802], serialize: (x) => x, parse: parseJson }
}

// --- errors -------------------------------------------------------------------------

class InvalidArgument extends Error {}
class RunAlreadyActive extends Error {}
class ProtocolError extends Error {
  constructor (message, requestId = null) {
    super(message)
    this.requestId = requestId
  }
}

// The outcome of a statement is unknown when the connection broke under it: no SQLSTATE
// at all (a socket error), a connection exception (08), or the server ending the session.
function outcomeUnknown (err) {
  const code = err.code
  if (typeof code !== 'string' || !/^[0-9A-Z]{5}$/.test(code)) return true
  return code.startsWith('08') || ['57P01', '57P02', '57P03'].includes(code)
}

function wireError (err) {
  if (err instanceof InvalidArgument) return { kind: 'InvalidArgument', message: err.message }
  if (err instanceof RunAlreadyActive) return { kind: 'RunAlreadyActive', message: err.message }
  if (err instanceof ProtocolError) return { kind: 'ProtocolError', message: err.message }
  const message = err.code ? `${err.code}: ${err.message}` : String(err.message || err)
  return err.indefinite ? { kind: 'Other', message, indefinite: true } : { kind: 'Other', message }
}

// --- the store ----------------------------------------------------------------------

let sql = null // the connected store's pool

// NUL in a text parameter (22021) or in jsonb (22P05): PostgreSQL cannot store it. The
// statement failed whole, so nothing was written: the caller's InvalidArgument (MSG-10).
const UNSTORABLE_VALUE = ['22021', '22P05']

async function query (text, params = []) {
  try {
    const result = await sql.unsafe(text, params, { prepare: true })
    return { rows: Array.from(result), rowCount: result.count }
  } catch (err) {
    if (UNSTORABLE_VALUE.includes(err.code)) {
      throw new InvalidArgument(`a value the database cannot store: ${err.message}`)
    }
    err.indefinite = outcomeUnknown(err)
    throw err
  }
}

async function one (sql, params) {
  const result = await query(sql, params)
  return result.rows[0] || null
}

async function changed (sql, params) {
  return (await query(sql, params)).rowCount
}

async function install ({ dsn }) {
  const installer = postgres({ ...connectionOptions(dsn), max: 1 })
  try {
    await installer.unsafe(SCHEMA) // no parameters: one simple query, one implicit transaction
  } finally {
    await installer.end({ timeout: 5 })
  }
  return null
}

async function connect ({ dsn }) {
  // clock_offset is ignored: this store decides nothing by app time (SWP-5).
  // A pool, as applications use it; every connection carries the DSN's application_name.
  sql = postgres({ ...connectionOptions(dsn), max: POOL_SIZE, idle_timeout: 0 })
  try {
    await sql.unsafe('SELECT 1=1') // the connect-time ping many applications send
  } catch (err) {
    err.indefinite = outcomeUnknown(err)
    throw err
  }
  return null
}

async function createChat ({ workspace_id }) {
  const row = await one(
    'INSERT INTO chats (workspace_id) VALUES ($1) RETURNING id', [workspace_id])
  return row.id
}

async function insertLegacyMessage ({ chat_id, workspace_id, content }) {
  const row = await one(
    `INSERT INTO messages (chat_id, workspace_id, role, status, content, parts)
     SELECT id, workspace_id, 'assistant', NULL, $3, $4::jsonb
       FROM chats WHERE id = $1 AND workspace_id = $2
     RETURNING id`,
    [chat_id, workspace_id, content, toJson([{ type: 'text', text: content }])])
  if (!row) throw new InvalidArgument(`no chat ${chat_id} in workspace ${workspace_id}`)
  return row.id
}

// Insert the turn's row once (MSG-1, MSG-3); a repeat returns the first row's id. ON
// CONFLICT DO NOTHING makes a concurrent duplicate wait for the winner and then do
// nothing; selecting from chats scopes the insert to a chat of this workspace (MSG-9).
async function persistTurn ({ chat_id, workspace_id, turn_id, role, status, content, parts }) {
  if (!turn_id) return null // no idempotency key, no row (MSG-2)
  const params = [chat_id, workspace_id, turn_id, role]
  const inserted = await one(
    `INSERT INTO messages (chat_id, workspace_id, turn_id, role, status, content, parts)
     SELECT id, workspace_id, $3, $4, $5, $6, $7::jsonb
       FROM chats WHERE id = $1 AND workspace_id = $2
     ON CONFLICT (chat_id, turn_id, role) WHERE turn_id IS NOT NULL DO NOTHING
     RETURNING id`,
    [...params, status, content, toJson(parts)])
  if (inserted) return inserted.id
  const existing = await one( // the turn already exists, or there is no such chat here
    `SELECT id FROM messages
      WHERE chat_id = $1 AND workspace_id = $2 AND turn_id = $3 AND role = $4`,
    params)
  return existing ? existing.id : null
}

function persistUserTurn ({ chat_id, workspace_id, turn_id, text }) {
  return persistTurn({
    chat_id,
    workspace_id,
    turn_id,
    role: 'user',
    status: 'completed',
    content: text,
    parts: [{ type: 'text', text }]
  })
}

function persistAssistantShell ({ chat_id, workspace_id, turn_id }) {
  return persistTurn({
    chat_id, workspace_id, turn_id, role: 'assistant', status: 'streaming', content: '', parts: []
  })
}

// The status guard is in the WHERE of the writing statement: a finalize or sweep that
// commits first makes this match nothing (MSG-4, SWP-4).
async function appendStep ({ message_id, workspace_id, content, parts }) {
  if (BROKEN === 'read-then-write') {
    return readThenWriteStep({ message_id, workspace_id, content, parts })
  }
  return (await changed(
    `UPDATE messages SET content = $3, parts = $4::jsonb, updated_at = ${BUMP_UPDATED_AT}
      WHERE id = $1 AND workspace_id = $2 AND status = 'streaming'`,
    [message_id, workspace_id, content, toJson(parts)])) > 0
}

// The broken variant: the guard is read first and the write does not repeat it, so a
// finalize that commits between the two is overwritten (MSG-4 catches it).
async function readThenWriteStep ({ message_id, workspace_id, content, parts }) {
  const row = await one(
    'SELECT status FROM messages WHERE id = $1 AND workspace_id = $2', [message_id, workspace_id])
  if (!row || row.status !== 'streaming') return false
  return (await changed(
    `UPDATE messages SET content = $3, parts = $4::jsonb, updated_at = ${BUMP_UPDATED_AT}
      WHERE id = $1 AND workspace_id = $2`,
    [message_id, workspace_id, content, toJson(parts)])) > 0
}

// Message and usage in one statement, so neither lands without the other. No status
// guard: finalize always wins (MSG-6). Usage only for a row that exists (MSG-8); the
// first usage stays (USG-1).
async function finalize ({ message_id, workspace_id, status, content, parts, usage }) {
  if (!TERMINAL_MESSAGE_STATUSES.includes(status)) {
    throw new InvalidArgument(
      `finalize status must be one of ${TERMINAL_MESSAGE_STATUSES.join(', ')}, not ${status}`)
  }
  const finished = content || parts.length ? parts : [NO_TEXT_PART] // MSG-7
  const values = USAGE_FIELDS.map((name) => (usage ? usage[name] : null))
  const row = await one(
    `WITH upd AS (
       UPDATE messages
          SET status = $3, content = $4, parts = $5::jsonb, updated_at = ${BUMP_UPDATED_AT}
        WHERE id = $1 AND workspace_id = $2
       RETURNING id
     ), ins AS (
       INSERT INTO usage
              (message_id, prompt_tokens, completion_tokens, total_tokens, cost_micros, model)
       SELECT id, $7::bigint, $8::bigint, $9::bigint, $10::bigint, $11::text
         FROM upd WHERE $6::boolean
       ON CONFLICT (message_id) WHERE message_id IS NOT NULL DO NOTHING
     )
     SELECT count(*)::int AS n FROM upd`,
    [message_id, workspace_id, status, content, toJson(finished), usage !== null,
      ...values])
  return row.n > 0
}

async function getMessage ({ message_id, workspace_id }) {
  return one(
    `SELECT ${MESSAGE_COLUMNS} FROM messages WHERE id = $1 AND workspace_id = $2`,
    [message_id, workspace_id])
}

async function listMessages ({ chat_id, workspace_id }) {
  const result = await query(
    `SELECT ${MESSAGE_COLUMNS} FROM messages WHERE chat_id = $1 AND workspace_id = $2
      ORDER BY created_at, id`,
    [chat_id, workspace_id])
  return result.rows
}

async function usageFor ({ message_id }) {
  const result = await query(
    `SELECT ${USAGE_COLUMNS} FROM usage WHERE message_id = $1 ORDER BY created_at, id`,
    [message_id])
  return result.rows
}

// Staleness by the database clock, in every workspace (SWP-1, SWP-5).
async function sweepStreaming ({ older_than }) {
  return changed(
    `UPDATE messages SET status = 'aborted', updated_at = ${BUMP_UPDATED_AT}
      WHERE status = 'streaming' AND updated_at < now() - make_interval(secs => $1)`,
    [older_than])
}

// The unique index over active runs decides a race (RUN-1, RUN-3); only its violation
// is RunAlreadyActive, a missing or foreign chat is InvalidArgument (RUN-2).
async function beginRun ({ chat_id, workspace_id, trigger }) {
  let row
  try {
    row = await one(
      `INSERT INTO runs (chat_id, workspace_id, status, trigger)
       SELECT id, workspace_id, 'running', $3 FROM chats WHERE id = $1 AND workspace_id = $2
       RETURNING ${RUN_COLUMNS}`,
      [chat_id, workspace_id, trigger])
  } catch (err) {
    if (err.code === '23505' && err.constraint_name === ONE_ACTIVE_RUN_INDEX) {
      throw new RunAlreadyActive(`chat ${chat_id} already has an active run`)
    }
    throw err
  }
  if (!row) throw new InvalidArgument(`no chat ${chat_id} in workspace ${workspace_id}`)
  return row
}

async function linkAssistant ({ run_id, message_id }) {
  return (await changed(
    `UPDATE runs SET assistant_message_id = m.id, updated_at = now()
       FROM messages m
      WHERE runs.id = $1 AND m.id = $2 AND m.chat_id = runs.chat_id`,
    [run_id, message_id])) > 0
}

async function recordStep ({ run_id }) {
  return (await changed(
    `UPDATE runs SET step_count = step_count + 1, updated_at = now()
      WHERE id = $1 AND status IN ('pending', 'running')`,
    [run_id])) > 0
}

async function finishRun ({ run_id, status }) {
  if (!TERMINAL_RUN_STATUSES.includes(status)) {
    throw new InvalidArgument(
      `finish_run status must be one of ${TERMINAL_RUN_STATUSES.join(', ')}, not ${status}`)
  }
  return (await changed(
    `UPDATE runs SET status = $2, finished_at = now(), updated_at = now()
      WHERE id = $1 AND status IN ('pending', 'running')`,
    [run_id, status])) > 0
}

// A stop request does not refresh updated_at (the owner's heartbeat): a dead owner's
// run is still swept (RUN-5, RUN-7).
async function requestStop ({ run_id }) {
  return (await changed(
    `UPDATE runs SET stop_requested = true
      WHERE id = $1 AND status IN ('pending', 'running')`,
    [run_id])) > 0
}

async function latestRun ({ chat_id, workspace_id }) {
  return one(
    `SELECT ${RUN_COLUMNS} FROM runs WHERE chat_id = $1 AND workspace_id = $2
      ORDER BY seq DESC LIMIT 1`,
    [chat_id, workspace_id])
}

async function sweepRuns ({ older_than }) {
  return changed(
    `UPDATE runs SET status = 'aborted', finished_at = now(), updated_at = now()
      WHERE status IN ('pending', 'running') AND updated_at < now() - make_interval(secs => $1)`,
    [older_than])
}

// --- the protocol -------------------------------------------------------------------

// Each request: its argument names with their types, and what performs it.
const REQUESTS = {
  install: { args: { dsn: 'string' }, run: install },
  connect: { args: { dsn: 'string', clock_offset: 'number?' }, run: connect },
  close: { args: {} },
  create_chat: { args: { workspace_id: 'string' }, run: createChat },
  insert_legacy_message: {
    args: { chat_id: 'string', workspace_id: 'string', content: 'string' },
    run: insertLegacyMessage
  },
  persist_user_turn: {
    args: { chat_id: 'string', workspace_id: 'string', turn_id: 'string?', text: 'string' },
    run: persistUserTurn
  },
  persist_assistant_shell: {
    args: { chat_id: 'string', workspace_id: 'string', turn_id: 'string?' },
    run: persistAssistantShell
  },
  append_step: {
    args: { message_id: 'string', workspace_id: 'string', content: 'string', parts: 'parts' },
    run: appendStep
  },
  finalize: {
    args: {
      message_id: 'string',
      workspace_id: 'string',
      status: 'string',
      content: 'string',
      parts: 'parts',
      usage: 'usage?'
    },
    run: finalize
  },
  get_message: { args: { message_id: 'string', workspace_id: 'string' }, run: getMessage },
  list_messages: { args: { chat_id: 'string', workspace_id: 'string' }, run: listMessages },
  usage_for: { args: { message_id: 'string' }, run: usageFor },
  sweep_streaming: { args: { older_than: 'number' }, run: sweepStreaming },
  begin_run: {
    args: { chat_id: 'string', workspace_id: 'string', trigger: 'string' },
    run: beginRun
  },
  link_assistant: { args: { run_id: 'string', message_id: 'string' }, run: linkAssistant },
  record_step: { args: { run_id: 'string' }, run: recordStep },
  finish_run: { args: { run_id: 'string', status: 'string' }, run: finishRun },
  request_stop: { args: { run_id: 'string' }, run: requestStop },
  latest_run: { args: { chat_id: 'string', workspace_id: 'string' }, run: latestRun },
  sweep_runs: { args: { older_than: 'number' }, run: sweepRuns }
}

const isObject = (value) => value !== null && typeof value === 'object' && !Array.isArray(value)

function exactKeys (object, expected, where) {
  const keys = Object.keys(object)
  const missing = expected.filter((k) => !keys.includes(k))
  const extra = keys.filter((k) => !expected.includes(k))
  if (missing.length || extra.length) {
    throw new ProtocolError(
      `${where}: expected exactly [${expected.join(', ')}]` +
      (missing.length ? `, missing [${missing.join(', ')}]` : '') +
      (extra.length ? `, unexpected [${extra.join(', ')}]` : ''))
  }
}

const TYPE_CHECKS = {
  string: (v) => typeof v === 'string',
  'string?': (v) => v === null || typeof v === 'string',
  number: (v) => typeof v === 'number' && Number.isFinite(v),
  'number?': (v) => v === null || (typeof v === 'number' && Number.isFinite(v)),
  parts: (v) => Array.isArray(v) && v.every(isObject),
  'usage?': (v) => v === null || isUsage(v)
}

// Exactly the UsageIn fields: four integers and the model name.
function isUsage (v) {
  return isObject(v) && Object.keys(v).length === USAGE_FIELDS.length &&
    USAGE_FIELDS.slice(0, 4).every((k) => Number.isSafeInteger(v[k])) &&
    typeof v.model === 'string'
}

function parseRequest (line) {
  let message
  try {
    message = parseJson(line)
  } catch (err) {
    throw new ProtocolError(`not a JSON line (${err.message})`)
  }
  if (!isObject(message)) throw new ProtocolError('a request must be a JSON object')
  const id = message.id
  if (!Number.isSafeInteger(id) || id < 1) {
    throw new ProtocolError(`id: expected a positive integer, got ${toJson(id)}`)
  }
  try {
    exactKeys(message, ['id', 'op', 'args'], 'request')
    if (typeof message.op !== 'string' || !Object.hasOwn(REQUESTS, message.op)) {
      throw new ProtocolError(`unknown op ${toJson(message.op)}`)
    }
    const spec = REQUESTS[message.op]
    if (!isObject(message.args)) throw new ProtocolError('args: expected an object')
    exactKeys(message.args, Object.keys(spec.args), `${message.op} args`)
    for (const [name, type] of Object.entries(spec.args)) {
      if (!TYPE_CHECKS[type](message.args[name])) {
        throw new ProtocolError(`${message.op}(${name}): expected ${type}`)
      }
    }
  } catch (err) {
    err.requestId = id
    throw err
  }
  return message
}

let state = 'new' // then installing, installed, connecting, connected, failed to connect

// The lifecycle, strictly: one install or one connect first, operations once a connect
// has answered, close at any time.
function admit ({ id, op }) {
  if (op === 'close') return
  if (op === 'install' || op === 'connect') {
    if (state !== 'new') throw new ProtocolError(`${op}: this driver is already ${state}`, id)
    state = op === 'install' ? 'installing' : 'connecting'
  } else if (state !== 'connected') {
    throw new ProtocolError(`${op}: no store is connected (the driver is ${state})`, id)
  }
}

function send (message) {
  process.stdout.write(toJson(message) + '\n')
}

function log (text) {
  process.stderr.write(`postgres-js-driver: ${text}\n`)
}

async function handle (line) {
  let request
  try {
    request = parseRequest(line)
    admit(request)
  } catch (err) {
    if (!(err instanceof ProtocolError)) throw err
    send({ id: err.requestId, error: wireError(err) })
    return
  }
  if (request.op === 'close') return shutdown(request.id)
  try {
    const result = await REQUESTS[request.op].run(request.args)
    if (request.op === 'install') state = 'installed'
    if (request.op === 'connect') state = 'connected'
    send({ id: request.id, ok: result === undefined ? null : result })
  } catch (err) {
    if (request.op === 'install') state = 'installed'
    if (request.op === 'connect') state = 'failed to connect'
    send({ id: request.id, error: wireError(err) })
  }
}

// Close the store, answer (if asked by a close request), exit.
async function shutdown (closeId) {
  if (sql) {
    const ending = sql.end({ timeout: 5 }).catch((err) => log(`closing: ${err.message}`))
    await Promise.race([ending, new Promise((resolve) => setTimeout(resolve, 5000).unref())])
  }
  if (closeId !== undefined) send({ id: closeId, ok: null })
  process.exit(0)
}

// The harness's connection strings are libpq key=value lists (URIs work too). Startup
// parameters (application_name, options) go in `connection`: every pooled connection
// sends them.
const CONNINFO_KEYS = [
  'host', 'port', 'user', 'password', 'dbname', 'application_name', 'options', 'connect_timeout'
]

function connectionOptions (dsn) {
  const base = { types: TYPES, onnotice: () => {}, prepare: true }
  const found = {}
  if (/^postgres(ql)?:\/\//.test(dsn)) {
    const url = new URL(dsn)
    Object.assign(found, Object.fromEntries(url.searchParams))
    Object.assign(found, {
      host: url.hostname || undefined,
      port: url.port || undefined,
      user: decodeURIComponent(url.username) || undefined,
      password: decodeURIComponent(url.password) || undefined,
      dbname: decodeURIComponent(url.pathname.slice(1)) || undefined
    })
    dsn = ''
  }
  const pair = /\s*([A-Za-z_]+)\s*=\s*(?:'((?:[^'\\]|\\.)*)'|((?:[^\s'\\]|\\.)+))/y
  let match
  let end = 0
  while ((match = pair.exec(dsn)) !== null) {
    end = pair.lastIndex
    const [, key, quoted, bare] = match
    if (!CONNINFO_KEYS.includes(key)) throw new Error(`unsupported connection parameter ${key}`)
    found[key] = (quoted ?? bare).replace(/\\(.)/g, '$1')
  }
  if (dsn.slice(end).trim() !== '') {
    throw new Error(`cannot read the connection string near ${dsn.slice(end)}`)
  }
  const connection = {}
  if (found.application_name) connection.application_name = found.application_name
  if (found.options) connection.options = found.options
  return {
    ...base,
    host: found.host,
    port: found.port ? Number(found.port) : undefined,
    user: found.user,
    password: found.password,
    database: found.dbname,
    connect_timeout: found.connect_timeout ? Number(found.connect_timeout) : undefined,
    connection
  }
}

// A bug of the driver itself: say so on the protocol, then exit.
function fatal (err) {
  send({ fatal: `postgres-js-driver: ${err.stack || err}` })
  process.exit(1)
}

function main () {
  process.on('uncaughtException', fatal)
  send({
    hello: { protocol: PROTOCOL_VERSION, implementation: IMPLEMENTATION, capabilities: CAPABILITIES }
  })
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity })
  lines.on('line', (line) => {
    if (line.trim()) handle(line).catch(fatal)
  })
  lines.on('close', () => shutdown()) // the harness is gone: nobody to answer
}

main()
