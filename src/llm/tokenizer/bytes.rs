//! GPT-2's reversible map between raw bytes and printable characters, which byte-level BPE
//! vocabularies are written in.

/// Byte -> char and char -> byte tables.
pub(crate) struct ByteMap {
    to_char: [char; 256],
    to_byte: std::collections::HashMap<char, u8>,
}

impl ByteMap {
    pub(crate) fn new() -> Self {
        let mut to_char = ['\0'; 256];
        let printable = |b: u32| {
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b)
        };
        let mut next = 256u32;
        for b in 0u32..256 {
            let c = if printable(b) {
                b
            } else {
                let c = next;
                next += 1;
                c
            };
            // All values are below 0x180, valid scalar values.
            to_char[b as usize] = char::from_u32(c).unwrap_or('\u{FFFD}');
        }
        let to_byte = to_char
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        ByteMap { to_char, to_byte }
    }

    pub(crate) fn char_of(&self, b: u8) -> char {
        self.to_char[b as usize]
    }

    /// Bytes of a vocabulary entry; `None` when it holds a char outside the map.
    pub(crate) fn decode(&self, token: &str) -> Option<Vec<u8>> {
        token
            .chars()
            .map(|c| self.to_byte.get(&c).copied())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_byte() {
        let m = ByteMap::new();
        let all: Vec<u8> = (0..=255).collect();
        let s: String = all.iter().map(|&b| m.char_of(b)).collect();
        assert_eq!(m.decode(&s).unwrap(), all);
        assert_eq!(m.char_of(b' '), 'Ġ');
        assert_eq!(m.char_of(b'\n'), 'Ċ');
        assert_eq!(m.char_of(b'a'), 'a');
    }
}
