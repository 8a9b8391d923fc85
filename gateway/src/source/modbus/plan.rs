//! The poll planner: merges a device's points into the fewest reads. Points of one register table are
//! sorted by address and joined while the read stays within the Modbus limit (125 registers, 2,000
//! bits) and the gap between them within the budget; a read never spans another table or a forbidden
//! range (registers the device refuses to be read). Pure.

use serde::Deserialize;

/// Modbus register tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    Coil,
    Discrete,
    Input,
    Holding,
}

impl Table {
    /// Most registers (or bits) one request may read.
    pub fn max_read(self) -> u16 {
        match self {
            Self::Coil | Self::Discrete => 2000,
            Self::Input | Self::Holding => 125,
        }
    }
}

/// What the planner needs of a point: where it lives and how wide it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub table: Table,
    pub address: u16,
    pub count: u16,
}

/// One request: a table, a start address and a count, and which spans (by index) it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub table: Table,
    pub address: u16,
    pub count: u16,
    pub spans: Vec<usize>,
}

/// Plans the reads for `spans`. `max_gap` is how many unused registers (bits for coils) one read may
/// bridge; `forbidden` are `(table, first, last)` ranges no read may touch.
pub fn plan(spans: &[Span], max_gap: u16, forbidden: &[(Table, u16, u16)]) -> Vec<Read> {
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_by_key(|&i| (spans[i].table, spans[i].address, spans[i].count));
    let mut reads: Vec<Read> = Vec::new();
    for i in order {
        let s = spans[i];
        let end = u32::from(s.address) + u32::from(s.count.max(1)); // exclusive
        if let Some(r) = reads.last_mut() {
            let r_end = u32::from(r.address) + u32::from(r.count);
            let joined_end = end.max(r_end);
            let fits = r.table == s.table
                && u32::from(s.address) <= r_end + u32::from(max_gap)
                && joined_end - u32::from(r.address) <= u32::from(s.table.max_read())
                && !forbidden.iter().any(|&(t, a, b)| {
                    t == s.table && u32::from(a) < joined_end && u32::from(b) >= u32::from(r.address)
                });
            if fits {
                r.count = (joined_end - u32::from(r.address)) as u16;
                r.spans.push(i);
                continue;
            }
        }
        reads.push(Read { table: s.table, address: s.address, count: s.count.max(1), spans: vec![i] });
    }
    reads
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(table: Table, address: u16, count: u16) -> Span {
        Span { table, address, count }
    }

    #[test]
    fn contiguous_and_nearby_registers_join() {
        let spans =
            [span(Table::Input, 0, 2), span(Table::Input, 2, 2), span(Table::Input, 10, 2), span(Table::Input, 40, 2)];
        let reads = plan(&spans, 8, &[]);
        assert_eq!(reads.len(), 2);
        assert_eq!((reads[0].address, reads[0].count, reads[0].spans.clone()), (0, 12, vec![0, 1, 2]));
        assert_eq!((reads[1].address, reads[1].count), (40, 2));
        assert_eq!(plan(&spans, 0, &[]).len(), 3, "no gap budget: the gap at 4..10 splits");
    }

    #[test]
    fn never_across_tables_or_forbidden_ranges_or_the_limit() {
        let spans = [span(Table::Input, 0, 2), span(Table::Holding, 2, 2), span(Table::Holding, 6, 2)];
        assert_eq!(plan(&spans, 10, &[]).len(), 2);
        assert_eq!(plan(&spans, 10, &[(Table::Holding, 4, 5)]).len(), 3, "4..5 may not be read");
        let wide: Vec<Span> = (0..100).map(|i| span(Table::Holding, i * 2, 2)).collect();
        let reads = plan(&wide, 0, &[]);
        assert_eq!(reads.len(), 2);
        assert!(reads.iter().all(|r| r.count <= 125));
        let bits: Vec<Span> = (0..3000).map(|i| span(Table::Coil, i, 1)).collect();
        assert_eq!(plan(&bits, 0, &[]).len(), 2);
    }

    #[test]
    fn an_sdm630_cycle_is_a_handful_of_requests() {
        // The shipped SDM630 profile's input registers: phases, totals, frequency, energies.
        let addrs = [0u16, 2, 4, 6, 8, 10, 12, 14, 16, 52, 60, 62, 70, 72, 74, 342];
        let spans: Vec<Span> = addrs.iter().map(|&a| span(Table::Input, a, 2)).collect();
        let reads = plan(&spans, 20, &[]);
        assert_eq!(reads.len(), 3, "{reads:?}");
        let served: usize = reads.iter().map(|r| r.spans.len()).sum();
        assert_eq!(served, addrs.len());
    }

    #[test]
    fn overlapping_points_share_registers() {
        // A status register read as a whole and as single bits.
        let spans = [span(Table::Holding, 5, 1), span(Table::Holding, 5, 1), span(Table::Holding, 5, 1)];
        let reads = plan(&spans, 0, &[]);
        assert_eq!(reads.len(), 1);
        assert_eq!(reads[0].count, 1);
    }
}
