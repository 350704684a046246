//! Reading the kernel into an [`Evidence`], without side effects: nf_tables is only dumped
//! (tables, chains, rules, the hook dump), and an x_tables table is read only when
//! `/proc/thread-self/net/ip{,6}_tables_names` lists it — a query for a table that does
//! not exist would instantiate it (and hook it into every packet's path).

use super::{BaseHook, Evidence, NftChain, NftTable, Request, XtTable};
use crate::backend::legacy::{self, LegacyBackend};
use crate::backend::nft::{nfproto, NftBackend};
use crate::backend::{Backend, BackendError};

/// Read what `req` needs: every nf_tables table and chain (with rule counts), the hook
/// dump of each (family, hook) asked for, the x_tables tables of each family, and each
/// managed chain with each backend [`Request`] reads it with.
pub fn gather(req: &Request<'_>) -> Result<Evidence, BackendError> {
    let mut nft = NftBackend::open()?;
    let o = nft.overview()?;
    let mut ev = Evidence {
        generation: o.generation,
        tables: o
            .tables
            .into_iter()
            .map(|(family, t)| NftTable {
                family,
                name: t.name,
                handle: t.handle,
                flags: t.flags,
            })
            .collect(),
        chains: o
            .chains
            .into_iter()
            .map(|(family, c, rules)| NftChain {
                family,
                base: c.hook.map(|(hook, priority)| BaseHook {
                    hook,
                    priority,
                    chain_type: c.chain_type.clone().unwrap_or_else(|| "filter".into()),
                    policy: c.policy,
                }),
                table: c.table,
                name: c.name,
                handle: c.handle,
                rules,
            })
            .collect(),
        ..Evidence::default()
    };
    for &family in &req.families {
        for &hook in &req.hooks {
            let dump = nft.hooks(nfproto(family), hook.number())?;
            ev.dumps.push((family, hook, dump));
        }
        for name in legacy::existing_tables(family)? {
            let chains = match LegacyBackend::chain_summaries(family, &name) {
                Ok(c) => Ok(c),
                Err(BackendError::Permission { capability, .. }) => {
                    Err(format!("reading it needs {capability}"))
                }
                Err(e) => return Err(e),
            };
            ev.xt.push(XtTable {
                family,
                name,
                chains,
            });
        }
    }
    let managed = req.managed(&ev);
    let mut xt = LegacyBackend::open(std::time::Duration::ZERO)?;
    for (family, spec, backends) in managed {
        for backend in backends {
            let read = match backend {
                "nft" => nft.read(family, &spec.table, &spec.chain),
                // Reads only a table /proc lists (see LegacyBackend::read).
                _ => xt.read(family, &spec.table, &spec.chain),
            };
            match read {
                Ok(snap) => ev.snapshots.push((backend, snap)),
                Err(BackendError::Permission { .. }) if backend == "legacy" => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(ev)
}
