import Testing
import VFFNFormats

@Suite struct JSONTests {
    @Test func keepsKeyOrderAndNumberLexemes() throws {
        let text = #"{"z":1,"a":[true,null,"x"],"eps":1e-05,"big":18446744073709551615,"neg":-0.5}"#
        let v = try JSON.parse(text)
        #expect(v.objectMembers!.map(\.0) == ["z", "a", "eps", "big", "neg"])
        #expect(v.compact == text)
        #expect(v["eps"]!.doubleValue == 1e-5)
        #expect(v["big"]!.uint64Value == UInt64.max)
        #expect(v["neg"]!.intValue == nil)
    }

    @Test func integersMustBeIntegerLexemes() throws {
        // serde rejects these as offsets; Foundation's JSONDecoder would accept them.
        #expect(try JSON.parse("1e2").intValue == nil)
        #expect(try JSON.parse("1.0").uint64Value == nil)
        #expect(try JSON.parse("-3").uint64Value == nil)
        #expect(try JSON.parse("42").intValue == 42)
    }

    @Test func rejectsDuplicateKeysWithTheirOffset() {
        #expect(throws: JSONError.self) { try JSON.parse(#"{"a":1,"b":2,"a":3}"#) }
        do { _ = try JSON.parse(#"{"a":1,"a":1}"#) } catch {
            #expect(error.reason == #"duplicate key "a""#)
            #expect(error.offset == 7)
        }
    }

    @Test(arguments: [
        ("", "unexpected end of input"),
        ("{} x", "trailing characters after the JSON value"),
        ("{\"a\":1}\0\0", "trailing characters after the JSON value"),
        ("[1,]", "unexpected character ']'"),
        ("01", "leading zero in a number"),
        ("-", "expected a digit"),
        ("1.", "expected a digit after '.'"),
        ("\"\\x\"", "invalid escape '\\x'"),
        ("\"\\ud800\"", "unpaired surrogate in \\u escape"),
        ("\"a\nb\"", "control character in a string"),
        ("{\"a\" 1}", "expected ':'"),
        ("tru", "expected 'true'"),
    ])
    func rejectsMalformedText(text: String, reason: String) {
        do {
            _ = try JSON.parse(text)
            Issue.record("accepted \(text.debugDescription)")
        } catch {
            #expect(error.reason == reason)
        }
    }

    @Test func rejectsDeepNesting() {
        let deep = String(repeating: "[", count: 300) + String(repeating: "]", count: 300)
        #expect(throws: JSONError.self) { try JSON.parse(deep) }
        let ok = String(repeating: "[", count: 200) + String(repeating: "]", count: 200)
        #expect((try? JSON.parse(ok)) != nil)
    }

    @Test func decodesEscapesAndSurrogatePairs() throws {
        let v = try JSON.parse(#""a\"b\\c\u00e9\ud83d\ude00\n""#)
        #expect(v.stringValue == "a\"b\\c\u{e9}\u{1F600}\n")
        #expect(try JSON.parse(v.compact) == v)
    }

    @Test func prettyPrintsLikeTransformers() throws {
        let v = try JSON.parse(#"{"a":[1,2],"b":{},"c":"x"}"#)
        #expect(v.pretty == "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": {},\n  \"c\": \"x\"\n}\n")
    }

    @Test func settingReplacesInPlaceOrAppends() throws {
        let v = try JSON.parse(#"{"a":1,"b":2}"#)
        #expect(v.setting("a", to: .int(5)).compact == #"{"a":5,"b":2}"#)
        #expect(v.setting("c", to: .null).compact == #"{"a":1,"b":2,"c":null}"#)
    }
}
