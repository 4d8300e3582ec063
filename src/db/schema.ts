import { sql } from 'drizzle-orm';
import {
  bigint,
  boolean,
  customType,
  index,
  integer,
  jsonb,
  pgTable,
  primaryKey,
  text,
  timestamp,
  unique,
  uuid,
} from 'drizzle-orm/pg-core';

const pgLsn = customType<{ data: string }>({ dataType: () => 'pg_lsn' });
const timestamptz = (name: string) => timestamp(name, { withTimezone: true, mode: 'string' });

/*
 * Heads and stats carry no unique constraint on purpose: the integrity views must be able to see
 * (and tests must be able to create) a missing or duplicated row. Exactly one row per aggregate
 * holds because only the owner of a partition writes them, inserting on the creation event and
 * updating afterwards.
 */
export const aggregates = pgTable('aggregates', {
  id: uuid('id').primaryKey(),
  type: text('type').notNull(),
  site: text('site').notNull(),
  partition: integer('partition').notNull(),
  createdAt: timestamptz('created_at').notNull(),
});

export const aggregateHeads = pgTable(
  'aggregate_heads',
  {
    aggregateId: uuid('aggregate_id').notNull(),
    ref: text('ref').notNull().default('head'),
    seq: integer('seq').notNull(),
    eventId: uuid('event_id').notNull(),
  },
  (t) => [index('aggregate_heads_aggregate_idx').on(t.aggregateId, t.ref)],
);

export const aggregateStats = pgTable(
  'aggregate_stats',
  {
    aggregateId: uuid('aggregate_id').notNull(),
    eventCount: integer('event_count').notNull(),
    lastEventAt: timestamptz('last_event_at').notNull(),
  },
  (t) => [index('aggregate_stats_aggregate_idx').on(t.aggregateId)],
);

export const events = pgTable(
  'events',
  {
    eventId: uuid('event_id').primaryKey(),
    aggregateId: uuid('aggregate_id').notNull(),
    seq: integer('seq').notNull(),
    type: text('type').notNull(),
    version: integer('version').notNull(),
    data: jsonb('data').notNull(),
    site: text('site').notNull(),
    partition: integer('partition').notNull(),
    streamEntryId: text('stream_entry_id').notNull(),
    occurredAt: timestamptz('occurred_at').notNull(),
    appliedAt: timestamptz('applied_at').notNull().default(sql`now()`),
    commitLsn: pgLsn('commit_lsn'),
    /** Name of the API token that wrote the event; null when the API was open. */
    writtenBy: text('written_by'),
  },
  // No further indexes: every one is written for each event on the hottest path, and the update
  // that sets commit_lsn after COMMIT stays a cheap HOT update only while commit_lsn is unindexed
  // (fillfactor 70 leaves it room on the page; migration 0004).
  (t) => [unique('events_aggregate_seq_key').on(t.aggregateId, t.seq)],
);

export const aggregateLinks = pgTable(
  'aggregate_links',
  {
    upstreamId: uuid('upstream_id').notNull(),
    downstreamId: uuid('downstream_id').notNull(),
    kind: text('kind').notNull(),
  },
  (t) => [
    primaryKey({ columns: [t.downstreamId, t.upstreamId, t.kind] }),
    index('aggregate_links_upstream_idx').on(t.upstreamId),
  ],
);

const projectionColumns = {
  id: uuid('id').primaryKey(),
  site: text('site').notNull(),
  acceptedAt: timestamptz('accepted_at').notNull(),
  updatedAt: timestamptz('updated_at').notNull(),
  version: integer('version').notNull(),
};

export const executedObsUnits = pgTable(
  'executed_obs_units',
  {
    ...projectionColumns,
    obsUnitId: text('obs_unit_id').notNull(),
    instrument: text('instrument').notNull(),
    status: text('status').notNull(),
    startTime: timestamptz('start_time').notNull(),
    endTime: timestamptz('end_time'),
    instrumentConfigurationId: uuid('instrument_configuration_id'),
    notes: text('notes'),
    metadata: jsonb('metadata').notNull(),
  },
  (t) => [
    index('executed_obs_units_obs_unit_idx').on(t.obsUnitId, t.id),
    index('executed_obs_units_status_idx').on(t.status, t.id),
  ],
);

export const rawDataFiles = pgTable(
  'raw_data_files',
  {
    ...projectionColumns,
    executedObsUnitId: uuid('executed_obs_unit_id').notNull(),
    path: text('path').notNull(),
    sizeBytes: bigint('size_bytes', { mode: 'number' }).notNull(),
    checksum: text('checksum').notNull(),
    checksumAlgorithm: text('checksum_algorithm').notNull(),
    createdAt: timestamptz('created_at').notNull(),
  },
  (t) => [index('raw_data_files_unit_idx').on(t.executedObsUnitId, t.id)],
);

export const rawDataPackages = pgTable(
  'raw_data_packages',
  {
    ...projectionColumns,
    name: text('name').notNull(),
    executedObsUnitId: uuid('executed_obs_unit_id').notNull(),
    fileIds: uuid('file_ids').array().notNull(),
  },
  (t) => [index('raw_data_packages_unit_idx').on(t.executedObsUnitId, t.id)],
);

export const instrumentConfigurations = pgTable('instrument_configurations', {
  ...projectionColumns,
  instrument: text('instrument').notNull(),
  configuration: jsonb('configuration').notNull(),
});

/*
 * One row per partition stream. `token` grows with every change of owner and is checked inside
 * each applying transaction, so a process that lost its lease (paused, partitioned) cannot commit.
 */
export const partitionLeases = pgTable(
  'partition_leases',
  {
    /** Sites sharing the main database each lease their own partitions ('': an earlier build's). */
    site: text('site').notNull().default(''),
    partition: integer('partition').notNull(),
    owner: text('owner'),
    token: bigint('token', { mode: 'number' }).notNull(),
    expiresAt: timestamptz('expires_at').notNull(),
    acquiredAt: timestamptz('acquired_at').notNull(),
  },
  (t) => [primaryKey({ columns: [t.site, t.partition] })],
);

/** Projector processes alive recently: each takes its fair share of the partitions. */
export const projectorMembers = pgTable(
  'projector_members',
  {
    /** A site's projectors share its partitions, and only its own. */
    site: text('site').notNull().default(''),
    consumer: text('consumer').notNull(),
    heartbeatAt: timestamptz('heartbeat_at').notNull(),
    /** The process that beat last under this name: another one beating between ours is a twin. */
    instance: uuid('instance'),
  },
  (t) => [primaryKey({ columns: [t.site, t.consumer] })],
);

/**
 * Which Redis log a site name is applied from. Two logs run under one name (a second site given
 * the first's OUTPOST_SITE) would share its partition leases, each applying only its own streams:
 * the partitions each held of the other's would wait for good. The log holding the claim keeps
 * it while its projectors renew it; another log takes it only once they stopped (released it, or
 * went silent), and only if it was not seen while they ran (site_log_sightings): a Redis replaced
 * by an empty one, not a copy.
 */
export const siteLogs = pgTable('site_logs', {
  site: text('site').primaryKey(),
  /** The id recorded beside the log in its Redis (ops/site-name.ts). */
  log: text('log').notNull(),
  /** When a projector of that log last renewed the claim. */
  seenAt: timestamptz('seen_at').notNull(),
  /** The last projector of another log refused, and when: the holding site's tools say so too. */
  refusedConsumer: text('refused_consumer'),
  refusedAt: timestamptz('refused_at'),
  /** The lease TTL of the process that last renewed it: its rounds come every third of it. */
  ttlMs: integer('ttl_ms'),
  /** When the holding log's last projector stopped gracefully; cleared by its next renewal. */
  releasedAt: timestamptz('released_at'),
  /** A log was refused before refused logs were recorded (0014): none takes the name by itself. */
  takeoverBarred: boolean('takeover_barred').notNull().default(false),
});

/**
 * When each log trying a site name was first seen (by the statement that tries). A log seen
 * while the holder's projectors still renewed the claim is another site's (a copy of its env
 * file), and never takes the name by itself; a log first seen after they stopped may (the
 * site's Redis replaced).
 */
export const siteLogSightings = pgTable(
  'site_log_sightings',
  {
    site: text('site').notNull(),
    log: text('log').notNull(),
    firstSeenAt: timestamptz('first_seen_at').notNull(),
  },
  (t) => [primaryKey({ columns: [t.site, t.log] })],
);
