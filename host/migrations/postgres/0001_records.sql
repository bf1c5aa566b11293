-- Every sealed record of the vault, one row each. `value` is the sealed form
-- ([version][nonce][ciphertext + tag]) whose associated data names `tbl` and `key`, so a
-- value copied to another row does not open.
CREATE TABLE portcullis_records (
    tbl   text  NOT NULL,
    key   text  NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (tbl, key)
);
