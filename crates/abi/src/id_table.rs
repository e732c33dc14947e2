//! Function-ID decoding by binary search over a table sorted at compile
//! time from a call enum's `ALL` list, so adding a call to `ALL` is all it
//! takes. (A linear search of `ALL` cost the hypervisor about 140
//! instructions per call, copying `ALL` to the stack included.)

/// `static $table: [(u32, $ty); N]`: every call of `$ty::ALL` with its ID,
/// in ascending ID order.
macro_rules! sorted_id_table {
    ($table:ident, $ty:ty) => {
        static $table: [(u32, $ty); <$ty>::ALL.len()] = {
            let mut t = [(0u32, <$ty>::ALL[0]); <$ty>::ALL.len()];
            let mut i = 0;
            while i < t.len() {
                t[i] = (<$ty>::ALL[i].id(), <$ty>::ALL[i]);
                i += 1;
            }
            let mut i = 1;
            while i < t.len() {
                let mut j = i;
                while j > 0 && t[j - 1].0 > t[j].0 {
                    let tmp = t[j - 1];
                    t[j - 1] = t[j];
                    t[j] = tmp;
                    j -= 1;
                }
                i += 1;
            }
            t
        };
    };
}
pub(crate) use sorted_id_table;

/// The call with function ID `id` in a table [`sorted_id_table`] built.
pub(crate) fn find<T: Copy>(table: &[(u32, T)], id: u32) -> Option<T> {
    let i = table.binary_search_by_key(&id, |&(k, _)| k).ok()?;
    table.get(i).map(|&(_, call)| call)
}

#[cfg(test)]
mod tests {
    use crate::guest::GuestCall;
    use crate::host::HostCall;

    #[test]
    fn binary_search_agrees_with_a_linear_search() {
        let ids = GuestCall::ALL
            .iter()
            .map(|c| c.id())
            .chain(HostCall::ALL.iter().map(|c| c.id()));
        for base in ids.chain([0, 0x8000_0000, u32::MAX]) {
            for id in base.saturating_sub(3)..=base.saturating_add(3) {
                assert_eq!(
                    GuestCall::try_from(id).ok(),
                    GuestCall::ALL.into_iter().find(|c| c.id() == id),
                    "{id:#x}"
                );
                assert_eq!(
                    HostCall::try_from(id).ok(),
                    HostCall::ALL.into_iter().find(|c| c.id() == id),
                    "{id:#x}"
                );
            }
        }
    }
}
