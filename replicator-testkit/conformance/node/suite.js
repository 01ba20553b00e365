// The testkit's legacy TCP protocol (EventStoreDB v5) through an independent
// client, node-eventstore-client (pinned in package.json). Run by
// replicator-testkit/tests/conformance.rs with `node --test`, against a server
// whose TCP endpoint is ES_TCP (tcp://HOST:PORT), with the administrator
// ES_ADMIN (NAME:PASSWORD) and the ordinary user ES_USER (NAME:PASSWORD); with
// ES_TLS=1 over TLS (the client cannot be given a CA: it does not validate the
// server's certificate).
'use strict';

const nodeTest = require('node:test');

// An upper bound, so that a server that never answers fails the test instead of
// hanging it; every step normally takes milliseconds.
const test = (name, body) => nodeTest(name, { timeout: 60_000 }, body);
const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');
const esc = require('node-eventstore-client');

const endpoint = process.env.ES_TCP;
const [adminName, adminPassword] = (process.env.ES_ADMIN || '').split(':');
const [userName, userPassword] = (process.env.ES_USER || '').split(':');
if (!endpoint || !adminName || !userName) {
  throw new Error('set ES_TCP, ES_ADMIN and ES_USER');
}
const admin = new esc.UserCredentials(adminName, adminPassword);
const run = randomUUID().slice(0, 8);
const streamName = (what) => `node-${what}-${run}`;

// A connection that has finished the handshake (Authenticate, IdentifyClient).
async function connect(credentials, name) {
  const settings = { maxReconnections: 0, maxRetries: 0 };
  if (process.env.ES_TLS === '1') {
    Object.assign(settings, { useSslConnection: true, validateServer: false, targetHost: 'localhost' });
  }
  if (credentials) settings.defaultUserCredentials = credentials;
  const connection = esc.createConnection(settings, endpoint, name);
  connection.on('error', () => {});
  const connected = new Promise((resolve) => connection.once('connected', resolve));
  await connection.connect();
  await connected;
  return connection;
}

function jsonEvent(type, data, metadata) {
  return esc.createJsonEventData(randomUUID(), data, metadata, type);
}

async function withConnection(credentials, name, body) {
  const connection = await connect(credentials, name);
  try {
    return await body(connection);
  } finally {
    connection.close();
  }
}

test('connects with credentials: the handshake completes and admin may read $all', () =>
  withConnection(admin, 'handshake', async (connection) => {
    const slice = await connection.readAllEventsBackward(esc.positions.end, 1, false);
    assert.ok(Array.isArray(slice.events));
  }));

test('wrong credentials: every operation fails with "Not Authenticated"; per-call credentials still work', () =>
  withConnection(new esc.UserCredentials(adminName, 'wrong'), 'wrong-credentials', async (connection) => {
    await assert.rejects(
      connection.appendToStream(streamName('denied'), esc.expectedVersion.any, [jsonEvent('T', {})]),
      (error) => error.message === 'Authentication error: Not Authenticated',
    );
    await assert.rejects(
      connection.readStreamEventsForward(streamName('denied'), 0, 10, false),
      /Authentication error: Not Authenticated/,
    );
    const result = await connection.appendToStream(
      streamName('override'), esc.expectedVersion.noStream, [jsonEvent('T', {})], admin);
    assert.equal(result.nextExpectedVersion.toNumber(), 0);
  }));

test('an ordinary user may write user streams but not read $all', () =>
  withConnection(new esc.UserCredentials(userName, userPassword), 'ordinary-user', async (connection) => {
    await connection.appendToStream(streamName('user'), esc.expectedVersion.any, [jsonEvent('T', {})]);
    await assert.rejects(
      connection.readAllEventsForward(esc.positions.start, 10, false),
      (error) => error.name === 'AccessDeniedError',
    );
  }));

test('JSON and binary events with metadata read back byte for byte, ids and dates intact', () =>
  withConnection(admin, 'payloads', async (connection) => {
    const stream = streamName('payloads');
    const json = jsonEvent('OrderPlaced', { order: 42, lines: ['a', 'b'] }, { traceId: 'x-1' });
    const bytes = Buffer.from([0, 1, 2, 254, 255]);
    const binary = esc.createEventData(randomUUID(), 'Blob', false, bytes, Buffer.from('meta\u0000bin'));
    const before = Date.now();
    const written = await connection.appendToStream(stream, esc.expectedVersion.noStream, [json, binary]);
    const after = Date.now();
    assert.equal(written.nextExpectedVersion.toNumber(), 1);
    assert.ok(written.logPosition.commitPosition.greaterThan(0));

    const slice = await connection.readStreamEventsForward(stream, 0, 10, false);
    assert.equal(slice.status, 'success');
    const [first, second] = slice.events.map((e) => e.event);
    assert.equal(slice.events.length, 2);
    assert.equal(first.eventId, json.eventId);
    assert.equal(first.eventType, 'OrderPlaced');
    assert.equal(first.isJson, true);
    assert.equal(first.eventNumber.toNumber(), 0);
    assert.deepEqual(JSON.parse(first.data.toString()), { order: 42, lines: ['a', 'b'] });
    assert.deepEqual(JSON.parse(first.metadata.toString()), { traceId: 'x-1' });
    assert.equal(second.eventId, binary.eventId);
    assert.equal(second.isJson, false);
    assert.deepEqual(second.data, bytes);
    assert.deepEqual(second.metadata, Buffer.from('meta\u0000bin'));
    for (const event of [first, second]) {
      assert.ok(event.createdEpoch >= before && event.createdEpoch <= after,
        `created ${event.createdEpoch} outside [${before}, ${after}]`);
    }

    const one = await connection.readEvent(stream, 1, false);
    assert.equal(one.status, 'success');
    assert.equal(one.event.event.eventId, binary.eventId);
    const last = await connection.readEvent(stream, -1, false);
    assert.equal(last.event.event.eventNumber.toNumber(), 1);
    const missing = await connection.readEvent(stream, 7, false);
    assert.equal(missing.status, 'notFound');
  }));

test('expected versions: conflicts fail with WrongExpectedVersionError and write nothing', () =>
  withConnection(admin, 'expected-versions', async (connection) => {
    const stream = streamName('versions');
    const created = await connection.appendToStream(stream, esc.expectedVersion.noStream,
      [jsonEvent('A', {}), jsonEvent('B', {})]);
    assert.equal(created.nextExpectedVersion.toNumber(), 1);
    const conflict = (error) => error.name === 'WrongExpectedVersionError';
    await assert.rejects(connection.appendToStream(stream, 5, [jsonEvent('C', {})]), conflict);
    await assert.rejects(
      connection.appendToStream(stream, esc.expectedVersion.noStream, [jsonEvent('C', {})]), conflict);
    await assert.rejects(
      connection.appendToStream(streamName('absent'), esc.expectedVersion.streamExists, [jsonEvent('C', {})]),
      conflict);
    const next = await connection.appendToStream(stream, 1, [jsonEvent('C', {})]);
    assert.equal(next.nextExpectedVersion.toNumber(), 2);
    const slice = await connection.readStreamEventsForward(stream, 0, 10, false);
    assert.deepEqual(slice.events.map((e) => e.event.eventType), ['A', 'B', 'C']);
  }));

test('a stream reads forward and backward in pages, with next numbers and end of stream', () =>
  withConnection(admin, 'stream-pages', async (connection) => {
    const stream = streamName('pages');
    await connection.appendToStream(stream, esc.expectedVersion.noStream,
      [0, 1, 2, 3, 4].map((n) => jsonEvent(`E${n}`, { n })));

    const forward = [];
    let from = 0;
    for (;;) {
      const slice = await connection.readStreamEventsForward(stream, from, 2, false);
      assert.equal(slice.lastEventNumber.toNumber(), 4);
      forward.push(...slice.events.map((e) => e.event.eventNumber.toNumber()));
      if (slice.isEndOfStream) break;
      from = slice.nextEventNumber;
    }
    assert.deepEqual(forward, [0, 1, 2, 3, 4]);

    const backward = [];
    from = esc.streamPosition.end;
    for (;;) {
      const slice = await connection.readStreamEventsBackward(stream, from, 2, false);
      backward.push(...slice.events.map((e) => e.event.eventNumber.toNumber()));
      if (slice.isEndOfStream) break;
      from = slice.nextEventNumber;
    }
    assert.deepEqual(backward, [4, 3, 2, 1, 0]);

    const missing = await connection.readStreamEventsForward(streamName('never-written'), 0, 10, false);
    assert.equal(missing.status, 'streamNotFound');
  }));

test('$all reads forward across pages: every event once, in order, until an empty page', () =>
  withConnection(admin, 'all-pages', async (connection) => {
    const stream = streamName('all');
    const written = [0, 1, 2, 3, 4, 5, 6].map((n) => jsonEvent('AllEvent', { n }));
    await connection.appendToStream(stream, esc.expectedVersion.noStream, written);

    const seen = [];
    let previous = null;
    let position = esc.positions.start;
    let pages = 0;
    for (;;) {
      const slice = await connection.readAllEventsForward(position, 3, false);
      pages += 1;
      for (const resolved of slice.events) {
        const at = resolved.originalPosition;
        if (previous) assert.ok(at.compareTo(previous) > 0, 'positions increase');
        previous = at;
        if (resolved.event.eventStreamId === stream) seen.push(resolved.event.eventId);
      }
      if (slice.isEndOfStream) break;
      assert.ok(slice.nextPosition.compareTo(position) > 0, 'the next position moves on');
      position = slice.nextPosition;
    }
    assert.ok(pages >= 3, `expected several pages, got ${pages}`);
    assert.deepEqual(seen, written.map((e) => e.eventId));

    const newest = await connection.readAllEventsBackward(esc.positions.end, 2, false);
    assert.equal(newest.events[0].event.eventId, written[6].eventId);
    assert.equal(newest.events[1].event.eventId, written[5].eventId);
  }));

test('a transaction: written around an append, invisible until committed, then read at its commit', () =>
  withConnection(admin, 'transaction', async (connection) => {
    const stream = streamName('tx');
    const plain = streamName('beside-tx');
    const events = [jsonEvent('T0', {}), jsonEvent('T1', {}), jsonEvent('T2', {})];
    const tx = await connection.startTransaction(stream, esc.expectedVersion.noStream);
    await tx.write(events.slice(0, 1));
    const beside = await connection.appendToStream(plain, esc.expectedVersion.noStream, [jsonEvent('P', {})]);
    await tx.write(events.slice(1));
    const pending = await connection.readStreamEventsForward(stream, 0, 10, false);
    assert.equal(pending.status, 'streamNotFound', 'invisible until committed');

    const committed = await tx.commit();
    assert.equal(committed.nextExpectedVersion.toNumber(), 2);
    const commit = committed.logPosition.commitPosition;
    assert.ok(commit.compare(beside.logPosition.commitPosition) > 0);

    const newest = await connection.readAllEventsBackward(esc.positions.end, 4, false);
    const read = newest.events.slice().reverse();
    assert.deepEqual(read.slice(1).map((e) => e.event.eventId), events.map((e) => e.eventId));
    assert.equal(read[0].event.eventStreamId, plain);
    for (const [i, resolved] of read.slice(1).entries()) {
      assert.equal(resolved.event.eventNumber.toNumber(), i);
      assert.ok(resolved.originalPosition.commitPosition.equals(commit), 'committed at C');
      assert.ok(resolved.originalPosition.preparePosition.compare(commit) < 0, 'prepared before C');
    }
    const first = read[1].originalPosition.preparePosition;
    assert.ok(first.compare(beside.logPosition.commitPosition) < 0, 'the first prepare precedes the append');

    const forward = await connection.readStreamEventsForward(stream, 0, 10, false);
    assert.deepEqual(forward.events.map((e) => e.event.eventId), events.map((e) => e.eventId));
  }));

test('a transaction whose expected version no longer holds at the commit fails with WrongExpectedVersionError', () =>
  withConnection(admin, 'transaction-conflict', async (connection) => {
    const stream = streamName('tx-conflict');
    const tx = await connection.startTransaction(stream, esc.expectedVersion.noStream);
    await tx.write([jsonEvent('Late', {})]);
    await connection.appendToStream(stream, esc.expectedVersion.noStream, [jsonEvent('First', {})]);
    await assert.rejects(tx.commit(), (error) => error.name === 'WrongExpectedVersionError');
    const slice = await connection.readStreamEventsForward(stream, 0, 10, false);
    assert.deepEqual(slice.events.map((e) => e.event.eventType), ['First']);
  }));

test('a subscription to $all receives live events, then drops on unsubscribe', () =>
  withConnection(admin, 'subscription', async (subscriber) => {
    const stream = streamName('live');
    const expected = [0, 1, 2].map((n) => jsonEvent('Live', { n }));
    const received = [];
    let allArrived;
    const arrived = new Promise((resolve) => { allArrived = resolve; });
    let droppedWith;
    const dropped = new Promise((resolve) => { droppedWith = resolve; });
    const subscription = await subscriber.subscribeToAll(false, (_, event) => {
      if (event.originalStreamId !== stream) return;
      received.push(event);
      if (received.length === expected.length) allArrived();
    }, (_, reason) => droppedWith(reason));

    await withConnection(admin, 'subscription-writer', async (writer) => {
      for (const event of expected) {
        await writer.appendToStream(stream, esc.expectedVersion.any, [event]);
      }
    });
    await arrived;
    assert.deepEqual(received.map((e) => e.event.eventId), expected.map((e) => e.eventId));
    for (const event of received) {
      assert.ok(event.originalPosition.commitPosition.greaterThan(subscription.lastCommitPosition));
    }
    subscription.unsubscribe();
    assert.equal(await dropped, 'userInitiated');
  }));

test('deleting a stream: soft delete reads as not found, hard delete as deleted for good', () =>
  withConnection(admin, 'deletes', async (connection) => {
    const soft = streamName('soft');
    await connection.appendToStream(soft, esc.expectedVersion.noStream, [jsonEvent('T', {})]);
    await connection.deleteStream(soft, 0, false);
    assert.equal((await connection.readStreamEventsForward(soft, 0, 10, false)).status, 'streamNotFound');
    const revived = await connection.appendToStream(soft, esc.expectedVersion.any, [jsonEvent('T', {})]);
    assert.equal(revived.nextExpectedVersion.toNumber(), 1);

    const hard = streamName('hard');
    await connection.appendToStream(hard, esc.expectedVersion.noStream, [jsonEvent('T', {})]);
    await assert.rejects(connection.deleteStream(hard, 3, true),
      (error) => error.name === 'WrongExpectedVersionError');
    await connection.deleteStream(hard, esc.expectedVersion.any, true);
    assert.equal((await connection.readStreamEventsForward(hard, 0, 10, false)).status, 'streamDeleted');
    await assert.rejects(
      connection.appendToStream(hard, esc.expectedVersion.any, [jsonEvent('T', {})]),
      (error) => error.name === 'StreamDeletedError');
  }));
