//! Reading H.264 Annex B byte streams: NAL units between start codes.

/// `nal_unit_type` of an IDR slice.
pub const NAL_IDR: u8 = 5;
/// `nal_unit_type` of a sequence parameter set.
pub const NAL_SPS: u8 = 7;
/// `nal_unit_type` of a picture parameter set.
pub const NAL_PPS: u8 = 8;

/// The NAL units of an Annex B stream, without their start codes (3- or
/// 4-byte). Bytes before the first start code are ignored.
pub fn nal_units(stream: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = match find_start_code(stream) {
        Some((_, after)) => &stream[after..],
        None => &stream[stream.len()..],
    };
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (nal, next) = match find_start_code(rest) {
            Some((at, after)) => (&rest[..at], &rest[after..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = next;
        // Trailing zero bytes belong to the next 4-byte start code.
        let end = nal.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        Some(&nal[..end])
    })
    .filter(|nal| !nal.is_empty())
}

/// `nal_unit_type` (low five bits of the header byte); 0 for an empty unit.
pub fn nal_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |b| b & 0x1f)
}

/// Position of the first `00 00 01` and the index just after it.
fn find_start_code(data: &[u8]) -> Option<(usize, usize)> {
    data.windows(3)
        .position(|w| w == [0, 0, 1])
        .map(|at| (at, at + 3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_three_and_four_byte_start_codes() {
        let stream = [
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 4, 5,
        ];
        let units: Vec<&[u8]> = nal_units(&stream).collect();
        assert_eq!(
            units,
            vec![&[0x67, 1, 2][..], &[0x68, 3][..], &[0x65, 4, 5][..]]
        );
        let types: Vec<u8> = units.iter().map(|n| nal_type(n)).collect();
        assert_eq!(types, vec![NAL_SPS, NAL_PPS, NAL_IDR]);
    }

    #[test]
    fn no_start_code_means_no_units() {
        assert_eq!(nal_units(&[1, 2, 3]).count(), 0);
        assert_eq!(nal_units(&[]).count(), 0);
    }
}
