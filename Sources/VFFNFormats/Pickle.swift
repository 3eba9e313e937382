/// A pickle interpreter that executes nothing: it evaluates the opcode stream symbolically and
/// recognises the few callables a state dict is built from. Any other global is refused by
/// name. Opcodes are those of protocol 2 that torch's `weights_only` loader accepts, plus the
/// protocol 4 framing ones (FRAME, MEMOIZE, STACK_GLOBAL, SHORT_BINUNICODE); stack, memo and
/// string sizes are bounded by the bytes of the pickle itself.
enum Pickle {
    /// A storage named by a persistent id: `('storage', <dtype>Storage, key, location, numel)`.
    struct StorageRef: Sendable, Equatable {
        let key: String
        let dtype: DType
        let numel: Int
    }

    /// What `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` would build.
    struct TensorRef: Sendable {
        let storage: StorageRef
        let offset: Int
        let shape: [Int]
        let stride: [Int]
    }

    final class ListBox { var items: [Value] = [] }
    final class DictBox { var items: [(Value, Value)] = [] }

    indirect enum Value {
        case none
        case bool(Bool)
        case int(Int)
        case float(Double)
        case string(String)
        case tuple([Value])
        case list(ListBox)
        case dict(DictBox)
        case global(Callable)
        case storage(StorageRef)
        case tensor(TensorRef)
        case storageType(DType)
    }

    /// The globals a state dict may name, and nothing else.
    enum Callable: Equatable {
        case orderedDict
        case rebuildTensorV2
        case rebuildParameter
        case rebuildFromTypeV2
        case tensorType
        case parameterType
    }

    static let storageTypes: [String: DType] = [
        "FloatStorage": .F32, "HalfStorage": .F16, "BFloat16Storage": .BF16, "DoubleStorage": .F64,
        "LongStorage": .I64, "IntStorage": .I32, "ShortStorage": .I16, "CharStorage": .I8,
        "ByteStorage": .U8, "BoolStorage": .BOOL,
    ]

    static func resolve(module: String, name: String, path: String, at offset: Int) throws(VFFNError) -> Value {
        switch (module, name) {
        case ("collections", "OrderedDict"): return .global(.orderedDict)
        case ("torch._utils", "_rebuild_tensor_v2"): return .global(.rebuildTensorV2)
        case ("torch._utils", "_rebuild_parameter"): return .global(.rebuildParameter)
        case ("torch._tensor", "_rebuild_from_type_v2"): return .global(.rebuildFromTypeV2)
        case ("torch", "Tensor"): return .global(.tensorType)
        case ("torch.nn.parameter", "Parameter"): return .global(.parameterType)
        case let ("torch", storage) where storageTypes[storage] != nil: return .storageType(storageTypes[storage]!)
        default:
            throw .badInput(path, "pickle global \(module).\(name) at byte \(offset) is not allowed: a state dict needs only tensors, storages and OrderedDict, and nothing in a checkpoint is executed")
        }
    }

    /// Evaluates a pickled state dict into (name, tensor) pairs in their stored order.
    static func stateDict(_ bytes: UnsafeRawBufferPointer, path: String) throws(VFFNError) -> [(String, TensorRef)] {
        var r = ByteReader(bytes, path: path, context: "pickle")
        // A pickle can put a list or dict inside itself (memo + APPEND); such cycles would
        // outlive the call under reference counting, so every box is emptied on the way out.
        // (Found by fuzzing, as a leak.)
        var boxes: [AnyObject] = []
        defer {
            for b in boxes {
                if let l = b as? ListBox { l.items = [] }
                if let d = b as? DictBox { d.items = [] }
            }
        }
        func list() -> Value { let l = ListBox(); boxes.append(l); return .list(l) }
        func dict() -> Value { let d = DictBox(); boxes.append(d); return .dict(d) }
        var stack: [Value] = []
        var marks: [Int] = []
        var memo: [Int: Value] = [:]
        let limit = max(1024, bytes.count)   // no structure can be larger than its encoding

        func fail(_ what: String) -> VFFNError { .badInput(path, "pickle: \(what) at byte \(r.offset)") }
        func pop() throws(VFFNError) -> Value {
            guard let v = stack.popLast() else { throw fail("stack underflow") }
            if let m = marks.last, stack.count < m { throw fail("stack underflow past a mark") }
            return v
        }
        func top() throws(VFFNError) -> Value {
            guard let v = stack.last else { throw fail("memoizing from an empty stack") }
            return v
        }
        func popMark() throws(VFFNError) -> [Value] {
            guard let m = marks.popLast() else { throw fail("no mark to pop to") }
            guard m <= stack.count else { throw fail("stack underflow past a mark") }
            let items = Array(stack[m...])
            stack.removeSubrange(m...)
            return items
        }
        func push(_ v: Value) throws(VFFNError) {
            guard stack.count < limit else { throw fail("stack deeper than the pickle is long") }
            stack.append(v)
        }
        func text(_ n: Int) throws(VFFNError) -> String {
            let b = try r.take(n, "string")
            guard let s = String(validating: b, as: UTF8.self) else { throw fail("string is not UTF-8") }
            return s
        }
        func length(_ v: UInt64) throws(VFFNError) -> Int {
            guard v <= UInt64(r.remaining) else { throw fail("length \(v) runs past the end of the pickle") }
            return Int(v)
        }
        func memoKey(_ v: UInt64) throws(VFFNError) -> Int {
            guard v <= UInt64(limit) else { throw fail("memo index \(v) is out of range") }
            return Int(v)
        }
        func get(_ key: Int) throws(VFFNError) -> Value {
            guard let v = memo[key] else { throw fail("memo index \(key) was never stored") }
            return v
        }

        while true {
            let opOffset = r.offset
            let op = try r.u8("opcode")
            switch op {
            case 0x80: // PROTO
                let p = try r.u8("protocol")
                guard p <= 4 else { throw fail("pickle protocol \(p) is not supported (at most 4)") }
            case 0x95: _ = try r.u64("frame length")                        // FRAME
            case 0x2E: // STOP
                guard let top = stack.last, stack.count == 1 else { throw fail("STOP with \(stack.count) values on the stack") }
                return try tensors(in: top, path: path)
            case 0x28: marks.append(stack.count)                             // MARK
            case 0x29: try push(.tuple([]))                                  // EMPTY_TUPLE
            case 0x5D: try push(list())                                      // EMPTY_LIST
            case 0x7D: try push(dict())                                      // EMPTY_DICT
            case 0x74: try push(.tuple(try popMark()))                       // TUPLE
            case 0x85: let a = try pop(); try push(.tuple([a]))              // TUPLE1
            case 0x86: let b = try pop(), a = try pop(); try push(.tuple([a, b]))
            case 0x87: let c = try pop(), b = try pop(), a = try pop(); try push(.tuple([a, b, c]))
            case 0x4E: try push(.none)                                       // NONE
            case 0x88: try push(.bool(true))                                 // NEWTRUE
            case 0x89: try push(.bool(false))                                // NEWFALSE
            case 0x4A: try push(.int(Int(try r.i32("BININT"))))              // BININT
            case 0x4B: try push(.int(Int(try r.u8("BININT1"))))              // BININT1
            case 0x4D: try push(.int(Int(try r.u16("BININT2"))))             // BININT2
            case 0x8A: // LONG1: n-byte little-endian two's complement
                let n = Int(try r.u8("LONG1 length"))
                guard n <= 8 else { throw fail("integer of \(n) bytes is too large") }
                let b = try r.take(n, "LONG1")
                var v: Int64 = 0
                for (i, x) in b.enumerated() { v |= Int64(x) << (8 * Int64(i)) }
                if n > 0, n < 8, b[n - 1] & 0x80 != 0 { v -= Int64(1) << (8 * Int64(n)) }
                try push(.int(Int(v)))
            case 0x47: // BINFLOAT, big-endian
                let b = try r.take(8, "BINFLOAT")
                try push(.float(Double(bitPattern: b.reduce(UInt64(0)) { $0 << 8 | UInt64($1) })))
            case 0x58: try push(.string(try text(try length(UInt64(try r.u32("BINUNICODE length"))))))
            case 0x8C: try push(.string(try text(Int(try r.u8("SHORT_BINUNICODE length")))))
            case 0x55: try push(.string(try text(Int(try r.u8("SHORT_BINSTRING length")))))
            case 0x71: memo[try memoKey(UInt64(try r.u8("BINPUT")))] = try top()             // BINPUT
            case 0x72: memo[try memoKey(UInt64(try r.u32("LONG_BINPUT")))] = try top()       // LONG_BINPUT
            case 0x94: memo[memo.count] = try top()                                          // MEMOIZE
            case 0x68: try push(try get(Int(try r.u8("BINGET"))))
            case 0x6A: try push(try get(try memoKey(UInt64(try r.u32("LONG_BINGET")))))
            case 0x63: // GLOBAL "module\nname\n"
                func line() throws(VFFNError) -> String {
                    var bytes: [UInt8] = []
                    while true {
                        let c = try r.u8("GLOBAL name")
                        if c == 0x0A { break }
                        guard bytes.count < 256 else { throw fail("GLOBAL name longer than 256 bytes") }
                        bytes.append(c)
                    }
                    return String(decoding: bytes, as: UTF8.self)
                }
                let module = try line(), name = try line()
                try push(try resolve(module: module, name: name, path: path, at: opOffset))
            case 0x93: // STACK_GLOBAL
                guard case let .string(name) = try pop(), case let .string(module) = try pop() else { throw fail("STACK_GLOBAL needs two strings") }
                try push(try resolve(module: module, name: name, path: path, at: opOffset))
            case 0x51: // BINPERSID
                try push(try persistent(try pop(), fail: fail))
            case 0x52: // REDUCE
                let args = try pop(), callable = try pop()
                let made = try reduce(callable, args, fail: fail)
                if case let .dict(d) = made { boxes.append(d) }
                try push(made)
            case 0x62: // BUILD: state on OrderedDicts (`_metadata`) and tensors is dropped.
                _ = try pop()
                guard let target = stack.last else { throw fail("BUILD without a target") }
                switch target {
                case .dict, .tensor: break
                default: throw fail("BUILD on something other than a dict or tensor")
                }
            case 0x61: // APPEND
                let v = try pop()
                guard case let .list(l) = stack.last else { throw fail("APPEND to a non-list") }
                l.items.append(v)
            case 0x65: // APPENDS
                let items = try popMark()
                guard case let .list(l) = stack.last else { throw fail("APPENDS to a non-list") }
                l.items += items
            case 0x73: // SETITEM
                let v = try pop(), k = try pop()
                guard case let .dict(d) = stack.last else { throw fail("SETITEM on a non-dict") }
                d.items.append((k, v))
            case 0x75: // SETITEMS
                let items = try popMark()
                guard items.count % 2 == 0 else { throw fail("SETITEMS with an odd number of values") }
                guard case let .dict(d) = stack.last else { throw fail("SETITEMS on a non-dict") }
                for i in stride(from: 0, to: items.count, by: 2) { d.items.append((items[i], items[i + 1])) }
            default:
                throw .badInput(path, "pickle opcode 0x\(String(op, radix: 16)) at byte \(opOffset) is not supported in a state dict")
            }
        }
    }

    static func persistent(_ pid: Value, fail: (String) -> VFFNError) throws(VFFNError) -> Value {
        guard case let .tuple(t) = pid, t.count == 5, case .string("storage") = t[0] else {
            throw fail("persistent id is not ('storage', type, key, location, numel)")
        }
        guard case let .storageType(dtype) = t[1] else { throw fail("persistent id names no storage type") }
        guard case let .string(key) = t[2] else { throw fail("storage key is not a string") }
        guard case let .int(numel) = t[4], numel >= 0 else { throw fail("storage size is not a non-negative integer") }
        return .storage(StorageRef(key: key, dtype: dtype, numel: numel))
    }

    static func reduce(_ callable: Value, _ args: Value, fail: (String) -> VFFNError) throws(VFFNError) -> Value {
        guard case let .global(f) = callable, case let .tuple(a) = args else { throw fail("REDUCE of something that is not an allowed global") }
        switch f {
        case .orderedDict:
            guard a.isEmpty else { throw fail("OrderedDict with arguments") }
            return .dict(DictBox())
        case .rebuildTensorV2:
            guard a.count >= 4, case let .storage(s) = a[0], case let .int(offset) = a[1],
                  case let .tuple(sizes) = a[2], case let .tuple(strides) = a[3] else {
                throw fail("_rebuild_tensor_v2 arguments are not (storage, offset, size, stride, ...)")
            }
            var shape: [Int] = [], stride: [Int] = []
            for v in sizes { guard case let .int(n) = v, n >= 0 else { throw fail("tensor size is not a non-negative integer") }; shape.append(n) }
            for v in strides { guard case let .int(n) = v, n >= 0 else { throw fail("tensor stride is not a non-negative integer") }; stride.append(n) }
            guard shape.count == stride.count, offset >= 0 else { throw fail("tensor size and stride disagree") }
            return .tensor(TensorRef(storage: s, offset: offset, shape: shape, stride: stride))
        case .rebuildParameter:
            guard let data = a.first, case .tensor = data else { throw fail("_rebuild_parameter of a non-tensor") }
            return data
        case .rebuildFromTypeV2:
            // (func, new_type, args, state): a Tensor or Parameter rebuilt by func(*args).
            guard a.count == 4, case let .global(inner) = a[0], case let .tuple(innerArgs) = a[2] else {
                throw fail("_rebuild_from_type_v2 arguments are not (func, type, args, state)")
            }
            guard case let .global(type) = a[1], type == .tensorType || type == .parameterType else { throw fail("_rebuild_from_type_v2 of a type other than Tensor or Parameter") }
            return try reduce(.global(inner), .tuple(innerArgs), fail: fail)
        case .tensorType, .parameterType:
            throw fail("calling torch.Tensor or Parameter directly is not supported")
        }
    }

    static func tensors(in top: Value, path: String) throws(VFFNError) -> [(String, TensorRef)] {
        guard case let .dict(d) = top else { throw .badInput(path, "pickle: the checkpoint is not a dict of tensors") }
        var out: [(String, TensorRef)] = []
        for (k, v) in d.items {
            guard case let .string(name) = k else { throw .badInput(path, "pickle: a state dict key is not a string") }
            switch v {
            case let .tensor(t): out.append((name, t))
            case .dict:
                throw .badInput(path, "pickle: \"\(name)\" holds a nested dict; this is a training checkpoint, not a state dict (save model.state_dict())")
            default:
                throw .badInput(path, "pickle: \"\(name)\" is not a tensor")
            }
        }
        return out
    }
}
