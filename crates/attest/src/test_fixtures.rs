//! Test fixtures shared by this crate's unit tests and other crates' tests
//! (`tools/rampart/tests/cli.rs`): compiled for `cargo test` of this crate
//! and with the `test-fixtures` feature, never into the hypervisor.

use alloc::vec::Vec;

/// A minimal flattened device tree (version 17, big-endian, no memory
/// reservations) whose only node below the root is `/chosen`, with one
/// property: `bootargs` = `bootargs` NUL-terminated.
///
/// # Panics
///
/// If `bootargs` is longer than a device tree can hold (4 GiB).
#[must_use]
pub fn minimal_fdt(bootargs: &str) -> Vec<u8> {
    const HEADER: usize = 40;
    const RESERVE_MAP: usize = 16;
    const FDT_BEGIN_NODE: u32 = 1;
    const FDT_END_NODE: u32 = 2;
    const FDT_PROP: u32 = 3;
    const FDT_END: u32 = 9;
    let word = |v: &mut Vec<u8>, w: usize| {
        let w = u32::try_from(w).expect("a device tree is smaller than 4 GiB");
        v.extend_from_slice(&w.to_be_bytes());
    };
    let strings = b"bootargs\0";
    let mut st: Vec<u8> = Vec::new();
    // The root node (empty name, padded to a word), then `chosen`.
    word(&mut st, FDT_BEGIN_NODE as usize);
    word(&mut st, 0);
    word(&mut st, FDT_BEGIN_NODE as usize);
    st.extend_from_slice(b"chosen\0\0");
    // `bootargs`: length, name offset 0 in the strings block, value.
    word(&mut st, FDT_PROP as usize);
    word(&mut st, bootargs.len() + 1);
    word(&mut st, 0);
    st.extend_from_slice(bootargs.as_bytes());
    st.push(0);
    while !st.len().is_multiple_of(4) {
        st.push(0);
    }
    word(&mut st, FDT_END_NODE as usize);
    word(&mut st, FDT_END_NODE as usize);
    word(&mut st, FDT_END as usize);
    let structure = HEADER + RESERVE_MAP;
    let total = structure + st.len() + strings.len();
    let mut d = Vec::with_capacity(total);
    for w in [
        0xd00d_feed,          // magic
        total,                // totalsize
        structure,            // off_dt_struct
        structure + st.len(), // off_dt_strings
        HEADER,               // off_mem_rsvmap
        17,                   // version
        16,                   // last_comp_version
        0,                    // boot_cpuid_phys
        strings.len(),        // size_dt_strings
        st.len(),             // size_dt_struct
    ] {
        word(&mut d, w);
    }
    // The memory reservation map: only its terminating (0, 0) entry.
    d.extend_from_slice(&[0; RESERVE_MAP]);
    d.extend_from_slice(&st);
    d.extend_from_slice(strings);
    d
}
