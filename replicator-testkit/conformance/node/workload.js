// A v5 workload written through an independent client, node-eventstore-client,
// over the legacy TCP protocol: ordinary appends to several streams, stream
// metadata, a soft delete, and explicit transactions whose writes interleave
// with the appends (so their records' prepare positions straddle other
// records and their commit position comes later), committed at different
// times. Run by the replicator's TCP source tests with ES_TCP (tcp://HOST:PORT)
// and ES_ADMIN (NAME:PASSWORD); prints one JSON line:
// {"transactions": {"<stream>": ["<event id>", …]}, "events": <appended events>};
// the first records of $all are the transaction of `txn-first`.
'use strict';

const { randomUUID } = require('node:crypto');
const esc = require('node-eventstore-client');

const endpoint = process.env.ES_TCP;
const [adminName, adminPassword] = (process.env.ES_ADMIN || '').split(':');
if (!endpoint || !adminName) {
  throw new Error('set ES_TCP and ES_ADMIN');
}

function jsonEvent(type, data) {
  return esc.createJsonEventData(randomUUID(), data, { by: 'workload.js' }, type);
}

async function main() {
  const settings = {
    maxReconnections: 0,
    maxRetries: 0,
    defaultUserCredentials: new esc.UserCredentials(adminName, adminPassword),
  };
  const connection = esc.createConnection(settings, endpoint, 'workload');
  connection.on('error', () => {});
  const connected = new Promise((resolve) => connection.once('connected', resolve));
  await connection.connect();
  await connected;
  try {
    const sizes = { 'txn-first': 3, 'txn-a': 4, 'txn-b': 2, 'txn-c': 5 };
    const open = {};
    const written = {};
    // One more event of `stream`'s transaction, unless it has all of them.
    const writeOne = async (stream) => {
      if (!open[stream] || written[stream].length === sizes[stream]) return;
      const event = jsonEvent('InTransaction', { stream, n: written[stream].length });
      await open[stream].write([event]);
      written[stream].push(event.eventId);
    };
    const commit = async (stream) => {
      while (written[stream].length < sizes[stream]) await writeOne(stream);
      await open[stream].commit();
      delete open[stream];
    };
    // First in $all: a transaction committed before anything else is written.
    open['txn-first'] = await connection.startTransaction('txn-first', esc.expectedVersion.noStream);
    written['txn-first'] = [];
    await commit('txn-first');
    for (const stream of ['txn-a', 'txn-b', 'txn-c']) {
      open[stream] = await connection.startTransaction(stream, esc.expectedVersion.any);
      written[stream] = [];
    }
    let events = 0;
    for (let i = 0; i < 24; i += 1) {
      const stream = `order-${i % 4}`;
      const batch = Array.from({ length: 1 + (i % 3) }, (_, n) => jsonEvent('OrderEvent', { i, n }));
      await connection.appendToStream(stream, esc.expectedVersion.any, batch);
      events += batch.length;
      if (i % 3 === 0) {
        for (const name of Object.keys(open)) await writeOne(name);
      }
      if (i === 9) await commit('txn-b');
      if (i === 12) {
        await connection.setStreamMetadataRaw('order-1', esc.expectedVersion.any, { owner: 'team-a' });
      }
      if (i === 15) await connection.deleteStream('order-3', esc.expectedVersion.any, false);
    }
    await commit('txn-c');
    await connection.appendToStream('after', esc.expectedVersion.any, [jsonEvent('Last', {})]);
    await commit('txn-a');
    events += 1;
    process.stdout.write(`${JSON.stringify({ transactions: written, events })}\n`);
  } finally {
    connection.close();
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
