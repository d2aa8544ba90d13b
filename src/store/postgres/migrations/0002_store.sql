-- The store's tables: what `src/store/sled` keeps in sled trees, as rows. Payloads and results
-- are sealed blocks of up to 16 records under the batch's data key, which is kept only wrapped
-- by the KEK in the HSM; deleting the batch row deletes the key with it (crypto-shredding).

-- One row per live batch. `seq` orders the queue; `id` is the random id issuers see.
CREATE TABLE batches (
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          bytea   NOT NULL UNIQUE CHECK (length(id) = 16),
    issuer      text    NOT NULL,
    created_at  bigint  NOT NULL,
    total       integer NOT NULL CHECK (total > 0),
    signed      integer NOT NULL DEFAULT 0,
    rejected    integer NOT NULL DEFAULT 0,
    -- The batch's data key, wrapped by the KEK (version byte first).
    data_key    bytea   NOT NULL,
    -- SHA-256 of the issuer and its idempotency key, when it gave one.
    idempotency bytea,
    CHECK (signed + rejected <= total)
);
CREATE INDEX batches_created_at ON batches (created_at);

-- Idempotency keys, by SHA-256 of issuer and key: a live batch, or a tombstone once purged.
CREATE TABLE idempotency (
    key_hash     bytea  PRIMARY KEY CHECK (length(key_hash) = 32),
    request_hash bytea  NOT NULL,
    batch_seq    bigint,
    -- Tombstones: the purged batch's id and when it was purged.
    deleted_id   bytea,
    deleted_at   bigint,
    CHECK ((batch_seq IS NULL) <> (deleted_at IS NULL))
);
CREATE INDEX idempotency_deleted_at ON idempotency (deleted_at) WHERE deleted_at IS NOT NULL;

-- The work queue: one row per block with pending records. A worker leases a block by writing
-- its node and a lease token, until `lease_until` (the database's clock, so nodes' clocks do
-- not matter); a commit under another token writes nothing.
CREATE TABLE pending (
    batch_seq   bigint  NOT NULL REFERENCES batches (seq) ON DELETE CASCADE,
    block       integer NOT NULL CHECK (block >= 0),
    sealed      bytea   NOT NULL,
    records     integer NOT NULL CHECK (records > 0),
    lease_token bigint,
    lease_node  text,
    lease_until timestamptz,
    PRIMARY KEY (batch_seq, block)
);

-- Results: one row per block with resolved records, the lines sealed.
CREATE TABLE results (
    batch_seq bigint  NOT NULL REFERENCES batches (seq) ON DELETE CASCADE,
    block     integer NOT NULL CHECK (block >= 0),
    sealed    bytea   NOT NULL,
    PRIMARY KEY (batch_seq, block)
);

-- The audit chain: `stored` is the chain hash then the entry's JSON, as in every backend.
CREATE TABLE audit (
    seq        bigint  PRIMARY KEY CHECK (seq > 0),
    stored     bytea   NOT NULL,
    checkpoint boolean NOT NULL DEFAULT false
);
CREATE INDEX audit_checkpoints ON audit (seq) WHERE checkpoint;

-- The end of the chain, one row: every append locks it, so appends are one line cluster-wide.
CREATE TABLE audit_head (
    one  boolean PRIMARY KEY DEFAULT true CHECK (one),
    seq  bigint  NOT NULL,
    hash bytea   NOT NULL CHECK (length(hash) = 32)
);
INSERT INTO audit_head (seq, hash) VALUES (0, decode(repeat('00', 32), 'hex'));

-- Key lifecycle records (JSON), by label; the keys themselves stay in the HSM.
CREATE TABLE keys (
    label  text  PRIMARY KEY,
    record bytea NOT NULL
);

-- The country's CSCAs (certificate DER by SHA-256 hex), and additions awaiting a second officer.
CREATE TABLE cscas (
    fingerprint text  PRIMARY KEY,
    der         bytea NOT NULL
);
CREATE TABLE csca_pending (
    fingerprint text  PRIMARY KEY,
    record      bytea NOT NULL
);
