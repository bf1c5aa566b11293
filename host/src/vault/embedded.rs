//! The embedded backend: one redb file, `<data-dir>/portcullis.redb`, mode 0600, one
//! process at a time (a second `open` is told the vault is in use).

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use redb::{ReadableDatabase as _, ReadableTable as _, TableDefinition};

use super::store::{Reseal, Store, Write};
use super::{DB_FILE, Table, VaultError, private_dir};

fn def(table: Table) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(table.name())
}

fn store(e: impl Into<redb::Error>) -> VaultError {
    VaultError::Store(e.into().to_string())
}

pub struct RedbStore {
    db: redb::Database,
    path: PathBuf,
}

impl RedbStore {
    /// Opens (or creates) the file in `data_dir`, with every table.
    pub fn open(data_dir: &Path) -> Result<Self, VaultError> {
        private_dir(data_dir)
            .map_err(|e| VaultError::Store(format!("{}: {e}", data_dir.display())))?;
        let path = data_dir.join(DB_FILE);
        let db = redb::Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => VaultError::Locked { path: path.clone() },
            other => store(other),
        })?;
        // Sealed, but nobody else's to read either (nor to learn its size or changes).
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .map_err(|e| VaultError::Store(format!("{}: {e}", path.display())))?;
        let tx = db.begin_write().map_err(store)?;
        for &t in Table::ALL {
            tx.open_table(def(t)).map_err(store)?;
        }
        tx.commit().map_err(store)?;
        Ok(Self { db, path })
    }
}

impl Store for RedbStore {
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, VaultError> {
        let tx = self.db.begin_read().map_err(store)?;
        let t = tx.open_table(def(table)).map_err(store)?;
        Ok(t.get(key).map_err(store)?.map(|v| v.value().to_vec()))
    }

    fn keys(&self, table: Table) -> Result<Vec<String>, VaultError> {
        let tx = self.db.begin_read().map_err(store)?;
        let t = tx.open_table(def(table)).map_err(store)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(store)? {
            let (k, _) = entry.map_err(store)?;
            out.push(k.value().to_owned());
        }
        Ok(out)
    }

    fn records(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>, VaultError> {
        let tx = self.db.begin_read().map_err(store)?;
        let t = tx.open_table(def(table)).map_err(store)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(store)? {
            let (k, v) = entry.map_err(store)?;
            out.push((k.value().to_owned(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn write(&self, writes: Vec<Write>) -> Result<Vec<bool>, VaultError> {
        let tx = self.db.begin_write().map_err(store)?;
        let mut existed = Vec::new();
        for w in writes {
            match w {
                Write::Put(table, key, value) => {
                    let mut t = tx.open_table(def(table)).map_err(store)?;
                    t.insert(key.as_str(), value.as_slice()).map_err(store)?;
                }
                Write::Delete(table, key) => {
                    let mut t = tx.open_table(def(table)).map_err(store)?;
                    existed.push(t.remove(key.as_str()).map_err(store)?.is_some());
                }
            }
        }
        tx.commit().map_err(store)?;
        Ok(existed)
    }

    fn insert_new(&self, table: Table, key: &str, value: &[u8]) -> Result<bool, VaultError> {
        let tx = self.db.begin_write().map_err(store)?;
        let inserted = {
            let mut t = tx.open_table(def(table)).map_err(store)?;
            if t.get(key).map_err(store)?.is_some() {
                false
            } else {
                t.insert(key, value).map_err(store)?;
                true
            }
        };
        tx.commit().map_err(store)?;
        Ok(inserted)
    }

    fn rewrite_all(&self, f: &mut Reseal<'_>) -> Result<usize, VaultError> {
        let tx = self.db.begin_write().map_err(store)?;
        let mut n = 0;
        for &table in Table::ALL {
            let mut t = tx.open_table(def(table)).map_err(store)?;
            let mut records = Vec::new();
            for entry in t.iter().map_err(store)? {
                let (k, v) = entry.map_err(store)?;
                records.push((k.value().to_owned(), v.value().to_vec()));
            }
            for (k, value) in records {
                let next = f(table, &k, &value)?;
                t.insert(k.as_str(), next.as_slice()).map_err(store)?;
                n += 1;
            }
        }
        tx.commit().map_err(store)?;
        Ok(n)
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}
