//! Throughput of the ownership table: operations per second for the calls
//! the hypervisor makes most, on a 1 GiB table (262,144 pages, 1 MiB of
//! metadata). Prints figures; asserts nothing about time.
//!
//! Run with `cargo bench -p rampart-ownership --bench throughput`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use rampart_ownership::{Component, PAGE_SIZE, PageMeta, Pfn, PhysAddr, Table, Transition, VmId};

/// Pages in the benchmarked table (1 GiB of RAM).
const PAGES: u64 = 1 << 18;
/// First page frame (RAM at 1 GiB, as on QEMU virt).
const BASE: u64 = 0x4_0000;
/// How long each measurement runs at least.
const MIN_TIME: Duration = Duration::from_millis(300);

fn addr(page: u64) -> PhysAddr {
    PhysAddr((BASE + page % PAGES) * PAGE_SIZE)
}

/// Runs `op` in batches until `MIN_TIME` has passed; returns ops/s.
fn measure(mut op: impl FnMut(u64)) -> f64 {
    let start = Instant::now();
    let mut done = 0u64;
    while start.elapsed() < MIN_TIME {
        for _ in 0..1024 {
            op(done);
            done += 1;
        }
    }
    done as f64 / start.elapsed().as_secs_f64()
}

fn report(name: &str, pages_per_op: u64, ops_per_second: f64) {
    println!(
        "{name:<44} {:>12.0} ops/s {:>14.0} pages/s",
        ops_per_second,
        ops_per_second * pages_per_op as f64
    );
}

fn main() {
    let mut meta = vec![PageMeta::HOST_OWNED; usize::try_from(PAGES).expect("fits")];
    let mut table = Table::new(&mut meta, Pfn(BASE)).expect("fits");
    let vm = VmId(1);

    // Pairs of calls that leave the table as they found it.
    for (name, pages, there, back) in [
        (
            "host_share_hyp + host_unshare_hyp, 1 page",
            1,
            Transition::HostShareHyp,
            Transition::HostUnshareHyp,
        ),
        (
            "host_donate_guest + host_reclaim_guest, 1 page",
            1,
            Transition::HostDonateGuest(vm),
            Transition::HostReclaimGuest(vm),
        ),
        (
            "host_donate_hyp + hyp_donate_host, 512 pages",
            512,
            Transition::HostDonateHyp,
            Transition::HypDonateHost,
        ),
        (
            "host_share_guest + host_unshare_guest, 512 pages",
            512,
            Transition::HostShareGuest(vm),
            Transition::HostUnshareGuest(vm),
        ),
    ] {
        let rate = measure(|i| {
            let at = addr(i * pages);
            black_box(table.apply(there, at, pages).expect("succeeds"));
            black_box(table.apply(back, at, pages).expect("succeeds"));
        });
        report(name, pages, 2.0 * rate);
    }

    // Guest-initiated share/unshare on guest memory.
    table
        .host_donate_guest(vm, addr(0), 4096)
        .expect("succeeds");
    let rate = measure(|i| {
        let at = addr(i % 4096);
        black_box(table.guest_share_host(vm, at, 1).expect("succeeds"));
        black_box(table.guest_unshare_host(vm, at, 1).expect("succeeds"));
    });
    report(
        "guest_share_host + guest_unshare_host, 1 page",
        1,
        2.0 * rate,
    );

    // Pin/unpin, the hot path of every vCPU run.
    table.host_share_hyp(addr(8192), 16).expect("succeeds");
    let rate = measure(|i| {
        let at = addr(8192 + i % 16);
        black_box(table.hyp_pin(at, 1).expect("succeeds"));
        black_box(table.hyp_unpin(at, 1).expect("succeeds"));
    });
    report("hyp_pin + hyp_unpin, 1 page", 1, 2.0 * rate);

    // Rejected calls (hostile host): the check fails on the first page.
    let rate = measure(|i| {
        black_box(
            table
                .apply(Transition::HostDonateHyp, addr(i % 4096), 1)
                .unwrap_err(),
        );
    });
    report("rejected host_donate_hyp (guest page)", 1, rate);

    // Queries.
    let rate = measure(|i| {
        black_box(table.state_of(addr(i), Component::Host).expect("in range"));
    });
    report("state_of", 1, rate);
    let rate = measure(|i| {
        black_box(
            table
                .largest_uniform_block(addr(i * 4099), Component::Host, &[262_144, 512])
                .expect("in range"),
        );
    });
    report("largest_uniform_block (1 GiB / 2 MiB / 4 KiB)", 1, rate);

    let start = Instant::now();
    table.check_invariants().expect("invariants");
    println!("check_invariants over {PAGES} pages: {:?}", start.elapsed());
}
