//! The logical fingerprint of a server: for every table of every database, its row count and
//! a digest of its rows that does not depend on their order: two 64-bit hashes of each row's
//! text form (by the row type's output function, never a cast the owner could define) (`hashtextextended` with seeds 0 and 1, the stable hash PostgreSQL partitions
//! by) summed over the table, exactly (`numeric`), then hashed with MD5. No sort and no string
//! of the whole table: one pass that PostgreSQL may run in parallel (at pgbench scale 50, 2.4 s
//! for `pgbench_accounts` where a sorted MD5 aggregate took 12 s). It detects damage, not an
//! adversary: the copies it compares were already authenticated object by object. The restored copy's fingerprint must
//! equal that of the same point materialised from the appliance's own layers: the two paths
//! (region objects through restore, local layers through the engine) share no bytes, so equal
//! fingerprints say the region holds the same data.

use std::collections::BTreeMap;

use super::conn::Server;

/// (database, table) -> (rows, digest).
pub type Fingerprint = BTreeMap<(String, String), (i64, String)>;

/// Every ordinary table outside the system schemas, as `regclass` prints it (quoted where
/// needed by PostgreSQL's own `quote_ident`).
const TABLES: &str = "SELECT c.oid::regclass::text FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
    ORDER BY 1";

/// The fingerprint of `server`.
pub async fn fingerprint(server: &Server) -> Result<Fingerprint, String> {
    let mut out = Fingerprint::new();
    for db in server.databases().await? {
        let c = server.connect_control(&db).await?;
        let tables: Vec<String> = c
            .query(TABLES, &[])
            .await
            .map_err(|e| format!("{db}: list tables: {e}"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for t in tables {
            // An identifier cannot be a query parameter; `t` is PostgreSQL's own quoted
            // rendering of a table's oid, read from this server's catalog just above.
            // The row's text by its type's output function, never by a cast: the owner may
            // define a cast of its own table's row type to text, and this runs as superuser.
            let q = format!(
                "SELECT pg_catalog.count(*), pg_catalog.md5(\
                 COALESCE(pg_catalog.sum(pg_catalog.hashtextextended(row_text, 0::pg_catalog.int8)), 0)::pg_catalog.text \
                 || ':' || \
                 COALESCE(pg_catalog.sum(pg_catalog.hashtextextended(row_text, 1::pg_catalog.int8)), 0)::pg_catalog.text) \
                 FROM (SELECT pg_catalog.textin(pg_catalog.record_out(r)) AS row_text FROM {t} r) s"
            );
            let row = c
                .query_one(&q, &[])
                .await
                .map_err(|e| format!("{db}: read table {t}: {e}"))?;
            out.insert((db.clone(), t), (row.get(0), row.get(1)));
        }
    }
    Ok(out)
}

/// How `restored` differs from `expected`, one line per table.
pub fn differences(restored: &Fingerprint, expected: &Fingerprint) -> Vec<String> {
    let mut out = Vec::new();
    for ((db, t), (n, h)) in expected {
        match restored.get(&(db.clone(), t.clone())) {
            None => out.push(format!(
                "{db}.{t}: missing from the restored copy ({n} rows)"
            )),
            Some((rn, _)) if rn != n => out.push(format!(
                "{db}.{t}: {rn} rows restored, {n} in the appliance's own copy"
            )),
            Some((_, rh)) if rh != h => out.push(format!(
                "{db}.{t}: {n} rows, but their content differs (digest {} restored, {} expected)",
                &rh[..rh.len().min(12)],
                &h[..h.len().min(12)]
            )),
            Some(_) => {}
        }
    }
    for (db, t) in restored.keys() {
        if !expected.contains_key(&(db.clone(), t.clone())) {
            out.push(format!("{db}.{t}: only in the restored copy"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(rows: &[(&str, i64, &str)]) -> Fingerprint {
        rows.iter()
            .map(|(t, n, h)| (("app".to_string(), t.to_string()), (*n, h.to_string())))
            .collect()
    }

    #[test]
    fn every_kind_of_difference_is_named() {
        let expected = fp(&[("a", 1, "x"), ("b", 2, "y"), ("c", 3, "z")]);
        let restored = fp(&[("a", 1, "x"), ("b", 5, "y"), ("c", 3, "w"), ("d", 0, "")]);
        let d = differences(&restored, &expected);
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(d[0].contains("app.b: 5 rows restored, 2"));
        assert!(d[1].contains("app.c: 3 rows, but their content differs"));
        assert!(d[2].contains("app.d: only in the restored copy"));
        let gone = fp(&[("a", 1, "x")]);
        assert!(differences(&gone, &expected)[0].contains("app.b: missing"));
        assert!(differences(&expected, &expected).is_empty());
    }
}
