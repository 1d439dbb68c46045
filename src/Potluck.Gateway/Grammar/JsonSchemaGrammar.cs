using System.Globalization;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace Potluck.Gateway.Grammar;

/// <summary>A schema this converter cannot turn into a grammar, or one over a limit: a 400 naming the feature and where.</summary>
public sealed class JsonSchemaGrammarException(string feature, string path, string message)
    : Exception($"{message} (schema feature '{feature}' at {path})")
{
    /// <summary>The keyword or limit that failed, e.g. "allOf", "maxItems", "schema size".</summary>
    public string Feature { get; } = feature;
    /// <summary>JSON pointer into the schema, "#" for its root.</summary>
    public string Path { get; } = path;
}

/// <summary>Bounds on what the converter accepts and produces; every one is checked before the work it bounds.</summary>
public sealed record JsonSchemaGrammarLimits
{
    /// <summary>Schema text length (raw JSON chars).</summary>
    public int MaxSchemaChars { get; init; } = 64 * 1024;
    /// <summary>Nesting of subschemas while converting ($ref expansion included).</summary>
    public int MaxDepth { get; init; } = 24;
    public int MaxEnumValues { get; init; } = 256;
    public int MaxProperties { get; init; } = 256;
    /// <summary>Largest count in minItems/maxItems/minLength/maxLength and regex {m,n} (llama.cpp expands each repetition into rules).</summary>
    public int MaxRepetition { get; init; } = 512;
    public int MaxPatternChars { get; init; } = 1024;
    public int MaxRules { get; init; } = 2048;
    public int MaxGrammarChars { get; init; } = 256 * 1024;
}

/// <summary>
/// JSON Schema → GBNF for llama.cpp's grammar sampler. <see cref="ToGbnf"/> writes rules for one JSON value
/// (no whitespace around it) whose rule names all start with the given root name, so several can share one grammar.
/// Supported: type (and type arrays), properties/required, additionalProperties (false, true or a schema; absent
/// means no extra properties, as llama.cpp does), enum, const, items/minItems/maxItems, prefixItems, anyOf/oneOf
/// (oneOf as anyOf), string minLength/maxLength/pattern (a regex subset)/format (date, time, date-time, uuid),
/// integer minimum/maximum, nested objects, $ref to "#/$defs/..", "#/definitions/.." or any "#/.." pointer
/// (recursion only through an object or array, never left-recursive). Everything else is refused.
/// </summary>
public static class JsonSchemaGrammar
{
    public static JsonSchemaGrammarLimits Limits { get; } = new();

    /// <summary>Rule name rules: what llama.cpp's GBNF parser accepts as a rule name.</summary>
    public static bool IsValidRuleName(string name) =>
        name.Length is > 0 and <= 64 && name.All(c => c is (>= 'a' and <= 'z') or (>= 'A' and <= 'Z') or (>= '0' and <= '9') or '-');

    /// <summary>GBNF rules where rule <paramref name="rootName"/> matches one JSON value valid under <paramref name="schema"/>.</summary>
    /// <exception cref="JsonSchemaGrammarException">A feature it cannot express, or a limit passed.</exception>
    /// <param name="compactWhitespace">At most one space between tokens instead of llama.cpp's newline and up to 20
    /// tabs: a weak model under the usual whitespace can spend its whole budget on blanks (tool-call arguments use it).</param>
    public static string ToGbnf(JsonElement schema, string rootName, bool compactWhitespace = false) => ToGbnf(schema, rootName, Limits, compactWhitespace);

    public static string ToGbnf(JsonElement schema, string rootName, JsonSchemaGrammarLimits limits, bool compactWhitespace = false)
    {
        ArgumentNullException.ThrowIfNull(limits);
        if (!IsValidRuleName(rootName)) throw new ArgumentException($"'{rootName}' is not a GBNF rule name ([a-zA-Z0-9-], 1-64 chars)", nameof(rootName));
        var size = schema.GetRawText().Length;
        if (size > limits.MaxSchemaChars)
            throw new JsonSchemaGrammarException("schema size", "#", $"The schema is {size} characters; at most {limits.MaxSchemaChars} are accepted");
        var converter = new Converter(schema, rootName, limits, compactWhitespace);
        return converter.Convert();
    }

    /// <summary>A complete grammar (root rule "root") for one value under <paramref name="schema"/>, optionally surrounded by whitespace.</summary>
    public static string ToRootGbnf(JsonElement schema) => $"root ::= {Prefix}value\n" + ToGbnf(schema, Prefix + "value");

    /// <summary>Any JSON object (response_format json_object), root rule "root".</summary>
    public static string JsonObjectGbnf { get; } = BuildJsonObjectGrammar();

    private const string Prefix = "schema-";

    private static string BuildJsonObjectGrammar()
    {
        using var document = JsonDocument.Parse("""{"type":"object","additionalProperties":true}""");
        return ToRootGbnf(document.RootElement);
    }

    private sealed class Converter(JsonElement root, string rootName, JsonSchemaGrammarLimits limits, bool compactWhitespace)
    {
        // Annotations: they do not constrain the value.
        private static readonly HashSet<string> Ignored = new(StringComparer.Ordinal)
        {
            "$schema", "$id", "$comment", "$anchor", "title", "description", "default", "examples", "deprecated", "readOnly", "writeOnly",
            "$defs", "definitions", "contentMediaType", "contentEncoding",
        };

        private readonly List<(string Name, string Body)> _rules = [];
        private readonly HashSet<string> _names = new(StringComparer.Ordinal);
        private readonly Dictionary<string, string> _refRules = new(StringComparer.Ordinal);
        // $refs being expanded, with the count of containers entered when each began: a cycle back to one with no
        // container in between would never consume input (left recursion).
        private readonly Dictionary<string, int> _refsInProgress = new(StringComparer.Ordinal);
        private int _containers;
        private int _depth;
        private int _chars;

        public string Convert()
        {
            var body = Visit(root, "#");
            // The value rule itself comes first so the text reads top-down.
            _rules.Insert(0, (rootName, body));
            var text = new StringBuilder();
            foreach (var (name, rule) in _rules) text.Append(name).Append(" ::= ").Append(rule).Append('\n');
            if (text.Length > limits.MaxGrammarChars)
                throw new JsonSchemaGrammarException("grammar size", "#", $"The schema needs a grammar of {text.Length} characters; at most {limits.MaxGrammarChars} are allowed");
            return text.ToString();
        }

        private string AddRule(string hint, string body)
        {
            if (_rules.Count + 1 >= limits.MaxRules)
                throw new JsonSchemaGrammarException("grammar size", "#", $"The schema needs more than {limits.MaxRules} grammar rules");
            _chars += body.Length + hint.Length;
            if (_chars > limits.MaxGrammarChars)
                throw new JsonSchemaGrammarException("grammar size", "#", $"The schema needs a grammar of more than {limits.MaxGrammarChars} characters");
            var name = UniqueName(hint);
            _rules.Add((name, body));
            return name;
        }

        private string UniqueName(string hint)
        {
            var clean = new StringBuilder(rootName.Length + hint.Length + 1).Append(rootName).Append('-');
            foreach (var c in hint)
            {
                if (clean.Length >= rootName.Length + 33) break;
                clean.Append(c is (>= 'a' and <= 'z') or (>= 'A' and <= 'Z') or (>= '0' and <= '9') ? c : '-');
            }
            var name = clean.ToString();
            for (var i = 1; !_names.Add(name); i++) name = $"{clean}{i}";
            return name;
        }

        // Shared primitives, emitted once per grammar when first used.
        private string Primitive(string name)
        {
            var full = $"{rootName}-{name}";
            if (_names.Contains(full)) return full;
            _names.Add(full);
            var body = name switch
            {
                "ws" => compactWhitespace ? "| \" \"" : "| \" \" | \"\\n\" [ \\t]{0,20}",
                // Printable ASCII and escapes only: llama.cpp's grammar decodes UTF-8 without checking continuation
                // bytes, so raw non-ASCII could come out as invalid UTF-8; \u escapes carry any other character.
                "char" => "[ !#-\\x5B\\x5D-~] | \"\\\\\" ([\"\\\\/bfnrt] | \"u\" " + Primitive("scalar") + ")",
                // Four hex digits that are not a surrogate (a lone one is not Unicode text).
                "scalar" => "[0-9a-cA-C] [0-9a-fA-F]{3} | [dD] [0-7] [0-9a-fA-F]{2} | [eEfF] [0-9a-fA-F]{3}",
                "string" => $"\"\\\"\" {Primitive("char")}* \"\\\"\"",
                "integral" => "\"0\" | [1-9] [0-9]{0,15}",
                "integer" => $"\"-\"? {Primitive("integral")}",
                "number" => $"\"-\"? {Primitive("integral")} (\".\" [0-9]{{1,16}})? ([eE] [-+]? [0-9]{{1,3}})?",
                "boolean" => "\"true\" | \"false\"",
                "null" => "\"null\"",
                "value" => $"{Primitive("object")} | {Primitive("array")} | {Primitive("string")} | {Primitive("number")} | {Primitive("boolean")} | {Primitive("null")}",
                "object" => $"\"{{\" {Primitive("ws")} ({Primitive("string")} {Primitive("ws")} \":\" {Primitive("ws")} {Primitive("value")} ({Primitive("ws")} \",\" {Primitive("ws")} {Primitive("string")} {Primitive("ws")} \":\" {Primitive("ws")} {Primitive("value")})* {Primitive("ws")})? \"}}\"",
                "array" => $"\"[\" {Primitive("ws")} ({Primitive("value")} ({Primitive("ws")} \",\" {Primitive("ws")} {Primitive("value")})* {Primitive("ws")})? \"]\"",
                "date" => "[0-9]{4} \"-\" (\"0\" [1-9] | \"1\" [0-2]) \"-\" (\"0\" [1-9] | [1-2] [0-9] | \"3\" [0-1])",
                "time" => "([01] [0-9] | \"2\" [0-3]) \":\" [0-5] [0-9] \":\" [0-5] [0-9] (\".\" [0-9]{1,6})? (\"Z\" | [+-] ([01] [0-9] | \"2\" [0-3]) \":\" [0-5] [0-9])",
                _ => throw new InvalidOperationException(name),
            };
            if (_rules.Count + 1 >= limits.MaxRules)
                throw new JsonSchemaGrammarException("grammar size", "#", $"The schema needs more than {limits.MaxRules} grammar rules");
            _rules.Add((full, body));
            return full;
        }

        private string Ws => Primitive("ws");

        private string Visit(JsonElement schema, string path)
        {
            if (++_depth > limits.MaxDepth)
                throw new JsonSchemaGrammarException("nesting depth", path, $"The schema nests deeper than {limits.MaxDepth} levels");
            try
            {
                return VisitCore(schema, path);
            }
            finally
            {
                _depth--;
            }
        }

        private string VisitCore(JsonElement schema, string path)
        {
            if (schema.ValueKind == JsonValueKind.True) return Primitive("value");
            if (schema.ValueKind == JsonValueKind.False)
                throw new JsonSchemaGrammarException("false schema", path, "The schema 'false' allows no value, so nothing can be generated");
            if (schema.ValueKind != JsonValueKind.Object)
                throw new JsonSchemaGrammarException("schema type", path, $"A schema must be an object or a boolean, not {Kind(schema)}");

            string? type = null;
            List<string>? types = null;
            foreach (var keyword in schema.EnumerateObject())
            {
                switch (keyword.Name)
                {
                    case "type":
                    case "properties" or "required" or "additionalProperties":
                    case "items" or "prefixItems" or "minItems" or "maxItems":
                    case "minLength" or "maxLength" or "pattern" or "format":
                    case "minimum" or "maximum" or "exclusiveMinimum" or "exclusiveMaximum":
                    case "enum" or "const" or "anyOf" or "oneOf" or "$ref" or "strict":
                        break;
                    default:
                        if (!Ignored.Contains(keyword.Name))
                            throw new JsonSchemaGrammarException(keyword.Name, Pointer(path, keyword.Name), $"The keyword '{Short(keyword.Name)}' is not supported in structured outputs");
                        break;
                }
            }

            if (schema.TryGetProperty("$ref", out var reference)) return VisitRef(schema, reference, path);
            if (schema.TryGetProperty("const", out var constant)) return Literal(JsonText(constant));
            if (schema.TryGetProperty("enum", out var values)) return VisitEnum(values, Pointer(path, "enum"));
            if (schema.TryGetProperty("anyOf", out var anyOf)) return VisitUnion(schema, anyOf, Pointer(path, "anyOf"), "anyOf");
            if (schema.TryGetProperty("oneOf", out var oneOf)) return VisitUnion(schema, oneOf, Pointer(path, "oneOf"), "oneOf");

            if (schema.TryGetProperty("type", out var typeElement))
            {
                if (typeElement.ValueKind == JsonValueKind.String) type = typeElement.GetString();
                else if (typeElement.ValueKind == JsonValueKind.Array)
                {
                    types = [];
                    foreach (var item in typeElement.EnumerateArray())
                    {
                        if (item.ValueKind != JsonValueKind.String) throw new JsonSchemaGrammarException("type", Pointer(path, "type"), "Every entry of 'type' must be a string");
                        var name = item.GetString()!;
                        if (!types.Contains(name)) types.Add(name);
                    }
                    if (types.Count == 0) throw new JsonSchemaGrammarException("type", Pointer(path, "type"), "An empty 'type' array allows no value");
                }
                else throw new JsonSchemaGrammarException("type", Pointer(path, "type"), "'type' must be a string or an array of strings");
            }

            if (types is not null)
            {
                if (types.Count == 1) return VisitTyped(schema, types[0], path);
                var alternatives = new List<string>();
                foreach (var t in types) alternatives.Add(Group(VisitTyped(schema, t, path)));
                return string.Join(" | ", alternatives);
            }
            if (type is not null) return VisitTyped(schema, type, path);

            // No type: infer it from the keywords present, else any value.
            if (schema.TryGetProperty("properties", out _) || schema.TryGetProperty("additionalProperties", out _)) return VisitTyped(schema, "object", path);
            if (schema.TryGetProperty("items", out _) || schema.TryGetProperty("prefixItems", out _)) return VisitTyped(schema, "array", path);
            if (schema.TryGetProperty("pattern", out _) || schema.TryGetProperty("minLength", out _) || schema.TryGetProperty("maxLength", out _) || schema.TryGetProperty("format", out _))
                return VisitTyped(schema, "string", path);
            return Primitive("value");
        }

        private string VisitTyped(JsonElement schema, string type, string path) => type switch
        {
            "object" => VisitObject(schema, path),
            "array" => VisitArray(schema, path),
            "string" => VisitString(schema, path),
            "integer" => VisitInteger(schema, path),
            "number" => VisitNumber(schema, path),
            "boolean" => Primitive("boolean"),
            "null" => Primitive("null"),
            _ => throw new JsonSchemaGrammarException("type", Pointer(path, "type"), $"Unknown type '{Short(type)}'; expected object, array, string, integer, number, boolean or null"),
        };

        private string VisitRef(JsonElement schema, JsonElement reference, string path)
        {
            var at = Pointer(path, "$ref");
            if (reference.ValueKind != JsonValueKind.String) throw new JsonSchemaGrammarException("$ref", at, "'$ref' must be a string");
            var target = reference.GetString()!;
            foreach (var keyword in schema.EnumerateObject())
                if (keyword.Name != "$ref" && !Ignored.Contains(keyword.Name))
                    throw new JsonSchemaGrammarException(keyword.Name, Pointer(path, keyword.Name), $"'{Short(keyword.Name)}' beside '$ref' is not supported");
            if (_refsInProgress.TryGetValue(target, out var containersAtStart))
            {
                if (containersAtStart == _containers)
                    throw new JsonSchemaGrammarException("$ref", at, $"The recursive '$ref' '{Short(target)}' refers back to itself without an object or array in between, so it never ends");
                // Recursion through a container: refer to the rule being built.
                return ReserveRefRule(target);
            }
            if (_refRules.TryGetValue(target, out var done)) return done;
            var resolved = Resolve(target, at);
            _refsInProgress[target] = _containers;
            var reserved = ReserveRefRule(target);
            try
            {
                var body = Visit(resolved, target);
                SetRule(reserved, body);
                return reserved;
            }
            finally
            {
                _refsInProgress.Remove(target);
            }
        }

        private string ReserveRefRule(string target)
        {
            if (_refRules.TryGetValue(target, out var name)) return name;
            var hint = "ref-" + target[(target.LastIndexOf('/') + 1)..];
            name = AddRule(hint, "\"\"");
            _refRules[target] = name;
            return name;
        }

        private void SetRule(string name, string body)
        {
            var index = _rules.FindIndex(r => r.Name == name);
            _chars += body.Length;
            if (_chars > limits.MaxGrammarChars)
                throw new JsonSchemaGrammarException("grammar size", "#", $"The schema needs a grammar of more than {limits.MaxGrammarChars} characters");
            _rules[index] = (name, body);
        }

        private JsonElement Resolve(string target, string at)
        {
            if (target == "#") return root;
            if (!target.StartsWith("#/", StringComparison.Ordinal))
                throw new JsonSchemaGrammarException("$ref", at, $"Only local references ('#/$defs/Name', '#/definitions/Name' or another '#/' pointer) are supported, not '{Short(target)}'");
            var current = root;
            foreach (var raw in target[2..].Split('/'))
            {
                var segment = Uri.UnescapeDataString(raw).Replace("~1", "/", StringComparison.Ordinal).Replace("~0", "~", StringComparison.Ordinal);
                if (current.ValueKind == JsonValueKind.Object && current.TryGetProperty(segment, out var next)) current = next;
                else if (current.ValueKind == JsonValueKind.Array && int.TryParse(segment, NumberStyles.None, CultureInfo.InvariantCulture, out var index) && index < current.GetArrayLength()) current = current[index];
                else throw new JsonSchemaGrammarException("$ref", at, $"The reference '{Short(target)}' points to nothing in the schema");
            }
            return current;
        }

        private string VisitEnum(JsonElement values, string path)
        {
            if (values.ValueKind != JsonValueKind.Array) throw new JsonSchemaGrammarException("enum", path, "'enum' must be an array");
            var count = values.GetArrayLength();
            if (count == 0) throw new JsonSchemaGrammarException("enum", path, "An empty 'enum' allows no value");
            if (count > limits.MaxEnumValues) throw new JsonSchemaGrammarException("enum", path, $"'enum' has {count} values; at most {limits.MaxEnumValues} are supported");
            var literals = new List<string>(count);
            foreach (var value in values.EnumerateArray())
            {
                var literal = Literal(JsonText(value));
                if (!literals.Contains(literal)) literals.Add(literal);
            }
            return string.Join(" | ", literals);
        }

        private string VisitUnion(JsonElement schema, JsonElement alternatives, string path, string keyword)
        {
            if (alternatives.ValueKind != JsonValueKind.Array || alternatives.GetArrayLength() == 0)
                throw new JsonSchemaGrammarException(keyword, path, $"'{keyword}' must be a non-empty array of schemas");
            foreach (var other in schema.EnumerateObject())
                if (other.Name != keyword && !Ignored.Contains(other.Name))
                    throw new JsonSchemaGrammarException(other.Name, Pointer(path[..path.LastIndexOf('/')], other.Name),
                        $"'{Short(other.Name)}' beside '{keyword}' is not supported; move it into each alternative");
            if (alternatives.GetArrayLength() > limits.MaxEnumValues)
                throw new JsonSchemaGrammarException(keyword, path, $"'{keyword}' has more than {limits.MaxEnumValues} alternatives");
            var rules = new List<string>();
            var i = 0;
            foreach (var alternative in alternatives.EnumerateArray())
            {
                var rule = Visit(alternative, $"{path}/{i++}");
                rules.Add(Group(rule));
            }
            return string.Join(" | ", rules);
        }

        private string VisitObject(JsonElement schema, string path)
        {
            var properties = new List<(string Name, string Rule)>();
            var required = new HashSet<string>(StringComparer.Ordinal);
            if (schema.TryGetProperty("required", out var requiredElement))
            {
                if (requiredElement.ValueKind != JsonValueKind.Array) throw new JsonSchemaGrammarException("required", Pointer(path, "required"), "'required' must be an array of property names");
                foreach (var item in requiredElement.EnumerateArray())
                {
                    if (item.ValueKind != JsonValueKind.String) throw new JsonSchemaGrammarException("required", Pointer(path, "required"), "'required' must be an array of property names");
                    required.Add(item.GetString()!);
                }
            }
            _containers++;
            try
            {
                var declared = new HashSet<string>(StringComparer.Ordinal);
                if (schema.TryGetProperty("properties", out var propertiesElement))
                {
                    if (propertiesElement.ValueKind != JsonValueKind.Object) throw new JsonSchemaGrammarException("properties", Pointer(path, "properties"), "'properties' must be an object");
                    var count = 0;
                    foreach (var property in propertiesElement.EnumerateObject())
                    {
                        if (++count > limits.MaxProperties)
                            throw new JsonSchemaGrammarException("properties", Pointer(path, "properties"), $"More than {limits.MaxProperties} properties in one object");
                        var at = Pointer(Pointer(path, "properties"), property.Name);
                        declared.Add(property.Name);
                        if (property.Value.ValueKind == JsonValueKind.False)
                        {
                            if (required.Contains(property.Name))
                                throw new JsonSchemaGrammarException("required", at, $"Property '{Short(property.Name)}' is required but its schema is false");
                            continue;
                        }
                        var value = Visit(property.Value, at);
                        var pair = $"{Literal(JsonText(property.Name))} {Ws} \":\" {Ws} {Group(value)}";
                        properties.Add((property.Name, AddRule("kv-" + property.Name, pair)));
                    }
                }
                foreach (var name in required)
                    if (!declared.Contains(name))
                        throw new JsonSchemaGrammarException("required", Pointer(path, "required"), $"Required property '{Short(name)}' is not declared in 'properties'");

                string? extra = null;
                if (schema.TryGetProperty("additionalProperties", out var additional))
                {
                    if (additional.ValueKind == JsonValueKind.True || additional.ValueKind == JsonValueKind.Object)
                    {
                        var value = additional.ValueKind == JsonValueKind.True ? Primitive("value") : Visit(additional, Pointer(path, "additionalProperties"));
                        extra = AddRule("extra-kv", $"{Primitive("string")} {Ws} \":\" {Ws} {Group(value)}");
                    }
                    else if (additional.ValueKind != JsonValueKind.False)
                        throw new JsonSchemaGrammarException("additionalProperties", Pointer(path, "additionalProperties"), "'additionalProperties' must be a boolean or a schema");
                }
                return Join(Join($"\"{{\" {Ws}", ObjectBody(properties, required, extra)), "\"}\"");
            }
            finally
            {
                _containers--;
            }
        }

        // Declared properties in order, the required ones always, then any extra ones; commas only between items.
        // first(i): the items from i on with none written yet; next(i): the same after at least one (leading comma).
        private string ObjectBody(List<(string Name, string Rule)> properties, HashSet<string> required, string? extra)
        {
            var comma = $"{Ws} \",\" {Ws}";
            var first = extra is null ? "" : $"({extra} ({comma} {extra})*)?";
            var next = extra is null ? "" : $"({comma} {extra})*";
            for (var i = properties.Count - 1; i >= 0; i--)
            {
                var (name, pair) = properties[i];
                var then = Join(pair, next);
                string newFirst, newNext;
                if (required.Contains(name))
                {
                    newFirst = then;
                    newNext = Join(comma, then);
                }
                else
                {
                    newFirst = first.Length == 0 ? $"({then})?" : $"{then} | {Group(first)}";
                    newNext = Join($"({comma} {pair})?", next);
                }
                first = AddRule("first-" + name, newFirst);
                next = AddRule("next-" + name, newNext);
            }
            return first.Length == 0 ? "" : $"{first} {Ws}";
        }

        private static string Join(string a, string b) => a.Length == 0 ? b : b.Length == 0 ? a : $"{a} {b}";

        private string VisitArray(JsonElement schema, string path)
        {
            var min = Count(schema, "minItems", path) ?? 0;
            var max = Count(schema, "maxItems", path);
            if (max < min) throw new JsonSchemaGrammarException("maxItems", Pointer(path, "maxItems"), $"maxItems {max} is less than minItems {min}");
            _containers++;
            try
            {
                var prefix = new List<string>();
                if (schema.TryGetProperty("prefixItems", out var prefixItems))
                {
                    if (prefixItems.ValueKind != JsonValueKind.Array) throw new JsonSchemaGrammarException("prefixItems", Pointer(path, "prefixItems"), "'prefixItems' must be an array of schemas");
                    var i = 0;
                    foreach (var item in prefixItems.EnumerateArray())
                    {
                        if (i >= limits.MaxProperties) throw new JsonSchemaGrammarException("prefixItems", Pointer(path, "prefixItems"), $"More than {limits.MaxProperties} prefixItems");
                        prefix.Add(Group(Visit(item, $"{Pointer(path, "prefixItems")}/{i++}")));
                    }
                }
                string? item_ = null;
                var hasItems = schema.TryGetProperty("items", out var items);
                if (hasItems && items.ValueKind == JsonValueKind.False) item_ = null;
                else if (hasItems) item_ = Group(Visit(items, Pointer(path, "items")));
                else if (prefix.Count == 0) item_ = Primitive("value");
                // With prefixItems and no items, JSON Schema allows any further items; the grammar writes none.

                var comma = $"{Ws} \",\" {Ws}";
                if (prefix.Count > 0)
                {
                    if (min > prefix.Count && item_ is null)
                        throw new JsonSchemaGrammarException("minItems", Pointer(path, "minItems"), $"minItems {min} needs more items than the {prefix.Count} prefixItems allow");
                    // The tuple part: each prefix item present in order, the later ones optional beyond minItems.
                    var tupleMax = max is { } m ? Math.Min(m, prefix.Count) : prefix.Count;
                    if (tupleMax == 0) return $"\"[\" {Ws} \"]\"";
                    var tail = "";
                    if (item_ is not null && (max is null || max > prefix.Count))
                    {
                        var extraMin = Math.Max(0, min - prefix.Count);
                        var extraMax = max is { } mm ? mm - prefix.Count : (int?)null;
                        tail = Repeat($"{comma} {item_}", extraMin, extraMax, path);
                    }
                    // Built from the end: item i is written only after item i - 1; the first minItems are required.
                    var body = tail;
                    for (var i = tupleMax - 1; i >= 0; i--)
                    {
                        var element = Join(i == 0 ? prefix[0] : $"{comma} {prefix[i]}", body);
                        body = i < min ? element : $"({element})?";
                    }
                    return $"\"[\" {Ws} {AddRule("tuple", body.Trim())} {Ws} \"]\"";
                }
                if (item_ is null)
                {
                    if (min > 0) throw new JsonSchemaGrammarException("items", Pointer(path, "items"), "'items' is false but minItems asks for items");
                    return $"\"[\" {Ws} \"]\"";
                }
                if (max == 0) return $"\"[\" {Ws} \"]\"";
                var more = Repeat($"{comma} {item_}", Math.Max(0, min - 1), max - 1, path);
                var list = $"{item_} {more}".Trim();
                if (min == 0) list = $"({list})?";
                return $"\"[\" {Ws} {AddRule("items", list)} {Ws} \"]\"";
            }
            finally
            {
                _containers--;
            }
        }

        private string Repeat(string element, int min, int? max, string path)
        {
            if (max is 0) return "";
            if (min == 0 && max is null) return $"({element})*";
            if (min == 1 && max is null) return $"({element})+";
            if (min == 0 && max == 1) return $"({element})?";
            return max is { } m ? $"({element}){{{min},{m}}}" : $"({element}){{{min},}}";
        }

        private int? Count(JsonElement schema, string keyword, string path)
        {
            if (!schema.TryGetProperty(keyword, out var value)) return null;
            if (value.ValueKind != JsonValueKind.Number || !value.TryGetInt64(out var number) || number < 0)
                throw new JsonSchemaGrammarException(keyword, Pointer(path, keyword), $"'{keyword}' must be a non-negative integer");
            if (number > limits.MaxRepetition)
                throw new JsonSchemaGrammarException(keyword, Pointer(path, keyword), $"'{keyword}' is {number}; at most {limits.MaxRepetition} is supported");
            return (int)number;
        }

        private string VisitString(JsonElement schema, string path)
        {
            var min = Count(schema, "minLength", path) ?? 0;
            var max = Count(schema, "maxLength", path);
            if (max < min) throw new JsonSchemaGrammarException("maxLength", Pointer(path, "maxLength"), $"maxLength {max} is less than minLength {min}");
            var hasPattern = schema.TryGetProperty("pattern", out var pattern);
            var hasFormat = schema.TryGetProperty("format", out var format);
            if (hasPattern && hasFormat) throw new JsonSchemaGrammarException("format", Pointer(path, "format"), "'pattern' and 'format' together are not supported");
            if (hasPattern)
            {
                if (schema.TryGetProperty("minLength", out _) || schema.TryGetProperty("maxLength", out _))
                    throw new JsonSchemaGrammarException("pattern", Pointer(path, "pattern"), "'pattern' together with minLength/maxLength is not supported; bound the length in the pattern");
                if (pattern.ValueKind != JsonValueKind.String) throw new JsonSchemaGrammarException("pattern", Pointer(path, "pattern"), "'pattern' must be a string");
                var regex = pattern.GetString()!;
                if (regex.Length > limits.MaxPatternChars)
                    throw new JsonSchemaGrammarException("pattern", Pointer(path, "pattern"), $"'pattern' is {regex.Length} characters; at most {limits.MaxPatternChars} are supported");
                var body = new PatternConverter(regex, Pointer(path, "pattern"), limits.MaxRepetition, Primitive("char")).Convert();
                return $"\"\\\"\" {AddRule("pattern", body)} \"\\\"\"";
            }
            if (hasFormat)
            {
                if (format.ValueKind != JsonValueKind.String) throw new JsonSchemaGrammarException("format", Pointer(path, "format"), "'format' must be a string");
                if (schema.TryGetProperty("minLength", out _) || schema.TryGetProperty("maxLength", out _))
                    throw new JsonSchemaGrammarException("format", Pointer(path, "format"), "'format' together with minLength/maxLength is not supported");
                var inner = format.GetString() switch
                {
                    "date" => Primitive("date"),
                    "time" => Primitive("time"),
                    "date-time" => $"{Primitive("date")} \"T\" {Primitive("time")}",
                    "uuid" => "[0-9a-fA-F]{8} \"-\" [0-9a-fA-F]{4} \"-\" [0-9a-fA-F]{4} \"-\" [0-9a-fA-F]{4} \"-\" [0-9a-fA-F]{12}",
                    var other => throw new JsonSchemaGrammarException("format", Pointer(path, "format"),
                        $"The string format '{Short(other ?? "")}' is not supported; supported: date, time, date-time, uuid"),
                };
                return $"\"\\\"\" {inner} \"\\\"\"";
            }
            if (min == 0 && max is null) return Primitive("string");
            return $"\"\\\"\" {Repeat(Primitive("char"), min, max, path)} \"\\\"\"".Replace("  ", " ", StringComparison.Ordinal);
        }

        private string VisitNumber(JsonElement schema, string path)
        {
            foreach (var keyword in (ReadOnlySpan<string>)["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"])
                if (schema.TryGetProperty(keyword, out _))
                    throw new JsonSchemaGrammarException(keyword, Pointer(path, keyword), $"'{keyword}' on a number is not supported (it is on integers)");
            return Primitive("number");
        }

        private string VisitInteger(JsonElement schema, string path)
        {
            long? min = Bound(schema, "minimum", path, 0), max = Bound(schema, "maximum", path, 0);
            if (Bound(schema, "exclusiveMinimum", path, 1) is { } exMin) min = min is { } m ? Math.Max(m, exMin) : exMin;
            if (Bound(schema, "exclusiveMaximum", path, -1) is { } exMax) max = max is { } m ? Math.Min(m, exMax) : exMax;
            if (min is null && max is null) return Primitive("integer");
            if (min > max) throw new JsonSchemaGrammarException("maximum", Pointer(path, "maximum"), "The integer range is empty (minimum above maximum)");
            return Group(IntegerRange.Gbnf(min, max));
        }

        private static long? Bound(JsonElement schema, string keyword, string path, int shift)
        {
            if (!schema.TryGetProperty(keyword, out var value)) return null;
            if (value.ValueKind != JsonValueKind.Number || !value.TryGetDouble(out var d) || !double.IsFinite(d))
                throw new JsonSchemaGrammarException(keyword, Pointer(path, keyword), $"'{keyword}' must be a number");
            if (Math.Abs(d) > IntegerRange.Largest)
                throw new JsonSchemaGrammarException(keyword, Pointer(path, keyword), $"'{keyword}' beyond ±{IntegerRange.Largest} is not supported");
            // An integer at least 2.5 is at least 3; exclusive bounds move by one past an integral value.
            var bound = shift > 0 || keyword == "minimum" ? Math.Ceiling(d) : Math.Floor(d);
            if (shift != 0 && bound == d) bound += shift;
            return (long)bound;
        }

        private static string Group(string rule) =>
            rule.Contains(' ') && !(rule.StartsWith('(') && MatchingParen(rule) == rule.Length - 1) ? $"({rule})" : rule;

        private static int MatchingParen(string rule)
        {
            var depth = 0;
            var inString = false;
            var inClass = false;
            for (var i = 0; i < rule.Length; i++)
            {
                var c = rule[i];
                if (c == '\\') { i++; continue; }
                if (inString) { if (c == '"') inString = false; continue; }
                if (inClass) { if (c == ']') inClass = false; continue; }
                if (c == '"') inString = true;
                else if (c == '[') inClass = true;
                else if (c == '(') depth++;
                else if (c == ')' && --depth == 0) return i;
            }
            return -1;
        }

        private static string JsonText(JsonElement value) => JsonSerializer.Serialize(value, CompactJson);
        private static string JsonText(string value) => JsonSerializer.Serialize(value, CompactJson);

        // The default encoder writes every non-ASCII character as a \u escape: the grammar stays ASCII (see "char").
        private static readonly JsonSerializerOptions CompactJson = new() { Encoder = JavaScriptEncoder.Default, WriteIndented = false };

        private static string Kind(JsonElement e) => e.ValueKind.ToString().ToLowerInvariant();

        private static string Pointer(string path, string segment) => path + "/" + segment.Replace("~", "~0", StringComparison.Ordinal).Replace("/", "~1", StringComparison.Ordinal);
    }

    /// <summary>A GBNF string literal matching exactly <paramref name="text"/>.</summary>
    public static string Literal(string text)
    {
        var builder = new StringBuilder(text.Length + 2).Append('"');
        foreach (var rune in text.EnumerateRunes())
            AppendEscaped(builder, rune.Value, inClass: false);
        return builder.Append('"').ToString();
    }

    /// <summary>Escapes a code point for a GBNF literal or character class: printable ASCII as is, the rest as \x/\u/\U.</summary>
    internal static void AppendEscaped(StringBuilder builder, int codePoint, bool inClass)
    {
        var special = inClass ? codePoint is '\\' or ']' or '[' or '-' or '^' or '"' : codePoint is '\\' or '"';
        if (codePoint is >= 0x20 and < 0x7F && !special) builder.Append((char)codePoint);
        else if (codePoint < 0x100) builder.Append("\\x").Append(codePoint.ToString("X2", CultureInfo.InvariantCulture));
        else if (codePoint < 0x10000) builder.Append("\\u").Append(codePoint.ToString("X4", CultureInfo.InvariantCulture));
        else builder.Append("\\U").Append(codePoint.ToString("X8", CultureInfo.InvariantCulture));
    }

    internal static string Short(string text) => text.Length <= 64 ? text : text[..64] + "...";
}
