//! Property tests: whatever is built parses back to the same values and
//! verifies; whatever is measured incrementally matches `measure_image`.

use proptest::prelude::*;
use rampart_attest::*;

fn flags() -> impl Strategy<Value = VmFlags> {
    (any::<bool>(), any::<bool>()).prop_map(|(protected, debug)| VmFlags { protected, debug, realm: false })
}

/// A valid manifest and an image it fits.
fn manifest_and_image() -> impl Strategy<Value = (Manifest, Vec<u8>)> {
    (
        1usize..3 * PAGE_SIZE,
        0u64..4,
        1u32..=MAX_VCPUS,
        flags(),
        any::<u64>(),
    )
        .prop_flat_map(|(image_len, extra_pages, vcpus, flags, entry_seed)| {
            let pages = (image_len as u64).div_ceil(PAGE_SIZE as u64) + extra_pages;
            let entry_offset = (entry_seed % image_len as u64) & !3;
            (
                Just(Manifest {
                    memory_size: pages * PAGE_SIZE as u64,
                    vcpus,
                    entry_offset,
                    flags,
                }),
                proptest::collection::vec(any::<u8>(), image_len),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn bundles_round_trip((manifest, image) in manifest_and_image(), seed in any::<[u8; 32]>()) {
        let key = SigningKey::from_bytes(&seed);
        let bytes = Bundle::build(&manifest, &image, &key).unwrap();
        prop_assert_eq!(bytes.len(), HEADER_LEN + image.len());
        let parsed = Bundle::parse(&bytes).unwrap();
        prop_assert_eq!(parsed.manifest, manifest);
        prop_assert_eq!(parsed.image, &image[..]);
        prop_assert_eq!(parsed.signer, key.verifying_key().to_bytes());
        prop_assert_eq!(parsed.measurement, measure_image(&manifest, &image).unwrap());
        prop_assert_eq!(verify(&parsed, &[key.verifying_key()]), Ok(key.verifying_key()));
    }

    #[test]
    fn incremental_measurement_matches_the_signer((manifest, image) in manifest_and_image()) {
        let state = manifest.initial_state();
        prop_assert_eq!(state.entry_pc, GUEST_RAM_BASE + manifest.entry_offset);
        prop_assert_eq!(state.x0, manifest.memory_size);
        let mut measurer = Measurer::new(&state);
        for index in 0..manifest.pages() {
            let mut page = [0u8; PAGE_SIZE];
            let start = usize::try_from(index).unwrap() * PAGE_SIZE;
            if start < image.len() {
                let end = image.len().min(start + PAGE_SIZE);
                page[..end - start].copy_from_slice(&image[start..end]);
            }
            measurer.page(GUEST_RAM_BASE + index * PAGE_SIZE as u64, &page).unwrap();
        }
        prop_assert_eq!(measurer.finish(), measure_image(&manifest, &image).unwrap());
    }

    #[test]
    fn reports_round_trip(
        measurement in any::<[u8; 32]>(),
        hypervisor in any::<[u8; 32]>(),
        nonce in proptest::collection::vec(any::<u8>(), 0..=MAX_NONCE_LEN),
        version in "[ -~]{0,64}",
        flags in flags(),
        secret in any::<[u8; 32]>(),
    ) {
        let secret = DeviceSecret::from_bytes(&secret);
        let key = secret.attestation_key();
        let claims = Claims {
            measurement: Measurement(measurement),
            nonce: &nonce,
            hypervisor_version: &version,
            hypervisor_measurement: Measurement(hypervisor),
            flags,
        };
        let bytes = build_report(&claims, &key).unwrap();
        prop_assert!(bytes.len() <= MAX_REPORT_SIZE);
        let report = verify_report(&bytes, key.public_key().as_bytes(), Some(&measurement), &nonce).unwrap();
        prop_assert_eq!(report, Report {
            measurement: Measurement(measurement),
            nonce: nonce.clone(),
            hypervisor_version: version.clone(),
            hypervisor_measurement: Measurement(hypervisor),
            flags,
        });
    }
}
