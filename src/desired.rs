//! The half of reconciling every controller shares: what runs but is no
//! longer desired comes out, to be stopped or removed by the caller.

use std::collections::BTreeMap;

/// Takes every entry whose key is no longer `desired` out of `running`, in
/// key order, so that the caller can stop what each one ran.
pub(crate) fn take_gone<K: Ord, V>(
    running: &mut BTreeMap<K, V>,
    desired: impl Fn(&K) -> bool,
) -> Vec<(K, V)> {
    running.extract_if(.., |key, _| !desired(key)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_not_desired_comes_out_in_key_order() {
        let mut running = BTreeMap::from([(3, "c"), (1, "a"), (2, "b")]);
        let gone = take_gone(&mut running, |k| *k == 2);
        assert_eq!(gone, vec![(1, "a"), (3, "c")]);
        assert_eq!(running, BTreeMap::from([(2, "b")]));
    }
}
