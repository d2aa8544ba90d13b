-- hcert-signer store schema, migration 0001: the store's own settings (schema facts, the KEK's
-- label, the country's CSCAs) as named values. Applied once, inside the migration transaction.
CREATE TABLE hcert_meta (
    key text PRIMARY KEY,
    value bytea NOT NULL
);
