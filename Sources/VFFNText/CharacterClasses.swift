/// The character classes the Hugging Face pipeline tests, each as the library that
/// `tokenizers` uses defines it: Oniguruma's `\s`, `\p{L}` and `\p{N}` in the Split regexes,
/// Rust's `char` methods in the pre-tokenizers, the `regex` crate's `\w` and `\s` around added
/// tokens, `unicode_categories` in BERT's normalizer. They agree on ASCII, which a table answers;
/// the rest asks the scalar's Unicode properties.
///
/// Those libraries carry Unicode tables of their own, older than Swift's (Unicode 17): measured
/// against `tokenizers` 0.23 (every scalar of every Unicode version tried), Oniguruma and Rust's
/// `char` know Unicode 16, `unicode-normalization-alignments` (normalization forms, combining
/// marks) knows 9.0, `unicode_categories` (BERT's punctuation, controls and accents) 8.0. A scalar
/// assigned later is, to them, unassigned: no letter, no punctuation, no decomposition.
enum CharacterClass {
    /// Whether `c` was assigned by Unicode `major.minor`.
    @inline(__always) static func assigned(_ c: Unicode.Scalar, by major: Int, _ minor: Int = 0) -> Bool {
        guard let age = c.properties.age else { return false }
        return age.major < major || (age.major == major && age.minor <= minor)
    }

    static let onigurumaVersion = 16, normalizationVersion = 9, categoriesVersion = 8

    private static let asciiLetter: UInt8 = 1, asciiDigit: UInt8 = 2, asciiSpace: UInt8 = 4, asciiPunct: UInt8 = 8

    private static let ascii: [UInt8] = (0..<128).map { c -> UInt8 in
        switch UInt8(c) {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"): return asciiLetter
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return asciiDigit
        case 9...13, 32: return asciiSpace
        case 33...47, 58...64, 91...96, 123...126: return asciiPunct
        default: return 0
        }
    }

    /// `\p{L}`: Lu, Ll, Lt, Lm, Lo.
    @inline(__always) static func isLetter(_ c: Unicode.Scalar) -> Bool {
        if c.value < 128 { return ascii[Int(c.value)] == asciiLetter }
        switch c.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return assigned(c, by: onigurumaVersion)
        default: return false
        }
    }

    /// `\p{N}` and Rust's `char::is_numeric`: Nd, Nl, No.
    @inline(__always) static func isNumber(_ c: Unicode.Scalar) -> Bool {
        if c.value < 128 { return ascii[Int(c.value)] == asciiDigit }
        switch c.properties.generalCategory {
        case .decimalNumber, .letterNumber, .otherNumber: return assigned(c, by: onigurumaVersion)
        default: return false
        }
    }

    /// `\s` of Oniguruma and of the regex crate, and Rust's `char::is_whitespace`: White_Space.
    @inline(__always) static func isWhitespace(_ c: Unicode.Scalar) -> Bool {
        if c.value < 128 { return ascii[Int(c.value)] == asciiSpace }
        return c.properties.isWhitespace
    }

    /// Rust's `char::is_alphanumeric`: Alphabetic or numeric.
    static func isAlphanumeric(_ c: Unicode.Scalar) -> Bool {
        if c.value < 128 { return ascii[Int(c.value)] & (asciiLetter | asciiDigit) != 0 }
        return (c.properties.isAlphabetic && assigned(c, by: onigurumaVersion)) || isNumber(c)
    }

    /// The regex crate's Unicode `\w`: Alphabetic, marks, Nd, Pc and Join_Control.
    static func isWordCharacter(_ c: Unicode.Scalar) -> Bool {
        if c.value < 128 { return ascii[Int(c.value)] & (asciiLetter | asciiDigit) != 0 || c == "_" }
        if c.properties.isJoinControl { return true }
        guard assigned(c, by: onigurumaVersion) else { return false }
        if c.properties.isAlphabetic { return true }
        switch c.properties.generalCategory {
        case .nonspacingMark, .spacingMark, .enclosingMark, .decimalNumber, .connectorPunctuation: return true
        default: return false
        }
    }

    /// BERT's punctuation: ASCII punctuation (which includes `$`, `+`, `<`, `^`, `` ` ``, `|`, `~`)
    /// or any P* category.
    static func isBertPunctuation(_ c: Unicode.Scalar) -> Bool {
        if c.value < 128 { return ascii[Int(c.value)] == asciiPunct }
        switch c.properties.generalCategory {
        case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation,
             .initialPunctuation, .finalPunctuation, .otherPunctuation: return assigned(c, by: categoriesVersion)
        default: return false
        }
    }

    /// BERT's control characters, which clean_text drops: Cc, Cf, Co, except tab, newline and
    /// carriage return. Unassigned scalars are kept (measured), though the comment in
    /// `tokenizers` says Cn.
    static func isBertControl(_ c: Unicode.Scalar) -> Bool {
        if c == "\t" || c == "\n" || c == "\r" { return false }
        switch c.properties.generalCategory {
        case .control, .privateUse, .surrogate: return true
        case .format: return assigned(c, by: categoriesVersion)
        default: return false
        }
    }

    /// The CJK ideograph blocks BERT surrounds with spaces.
    static func isChineseCharacter(_ c: Unicode.Scalar) -> Bool {
        switch c.value {
        case 0x4E00...0x9FFF, 0x3400...0x4DBF, 0x20000...0x2A6DF, 0x2A700...0x2B73F, 0x2B740...0x2B81F,
             0x2B920...0x2CEAF, 0xF900...0xFAFF, 0x2F800...0x2FA1F: return true
        default: return false
        }
    }

    /// Mn, as BERT's strip_accents tests it (`unicode_categories`).
    static func isNonspacingMark(_ c: Unicode.Scalar) -> Bool {
        c.value >= 0x300 && c.properties.generalCategory == .nonspacingMark && assigned(c, by: categoriesVersion)
    }

    /// Any mark (Mn, Mc, Me), as the StripAccents normalizer tests it (`unicode-normalization`).
    static func isCombiningMark(_ c: Unicode.Scalar) -> Bool {
        guard c.value >= 0x300 else { return false }
        switch c.properties.generalCategory {
        case .nonspacingMark, .spacingMark, .enclosingMark: return assigned(c, by: normalizationVersion)
        default: return false
        }
    }
}
