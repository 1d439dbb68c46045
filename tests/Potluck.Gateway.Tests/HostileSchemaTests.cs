using System.Diagnostics;
using System.Text;
using Potluck.Gateway.Api;

namespace Potluck.Gateway.Tests;

/// <summary>
/// Hostile response_format bodies → a 400 naming the field (and, for schemas, the feature and its JSON path), never a
/// 500 and never a hang: parsing converts the schema, so every case runs the converter under its limits.
/// </summary>
public sealed class HostileSchemaTests
{
    private const string Format = "response_format";
    private const string SchemaParam = "response_format.json_schema.schema";

    private static string Schema(string schema) => """{"type":"json_schema","json_schema":{"name":"x","strict":true,"schema":""" + schema + "}}";

    private static string Nested(string open, string close, int levels) =>
        string.Concat(Enumerable.Repeat(open, levels)) + "{}" + string.Concat(Enumerable.Repeat(close, levels));

    public static TheoryData<string, string, string> Cases => new()
    {
        // response_format itself
        { "\"json\"", Format, "Invalid type" },
        { "42", Format, "Invalid type" },
        { "[]", Format, "Invalid type" },
        { "{}", "response_format.type", "Missing" },
        { """{"type":null}""", "response_format.type", "Missing" },
        { """{"type":5}""", "response_format.type", "Invalid type" },
        { """{"type":"xml"}""", "response_format.type", "'xml' is not supported" },
        { """{"type":"JSON_OBJECT"}""", "response_format.type", "not supported" },
        { """{"type":"grammar"}""", "response_format.type", "not supported" },
        { """{"type":"json_schema"}""", "response_format.json_schema", "Missing" },
        { """{"type":"json_schema","json_schema":"{}"}""", "response_format.json_schema", "Invalid type" },
        { """{"type":"json_schema","json_schema":{"schema":{}}}""", "response_format.json_schema.name", "Missing" },
        { """{"type":"json_schema","json_schema":{"name":7,"schema":{}}}""", "response_format.json_schema.name", "Invalid type" },
        { """{"type":"json_schema","json_schema":{"name":"has space","schema":{}}}""", "response_format.json_schema.name", "Invalid value" },
        { """{"type":"json_schema","json_schema":{"name":"","schema":{}}}""", "response_format.json_schema.name", "Invalid value" },
        { "{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"" + new string('n', 65) + "\",\"schema\":{}}}", "response_format.json_schema.name", "Invalid value" },
        { """{"type":"json_schema","json_schema":{"name":"x","strict":"yes","schema":{}}}""", "response_format.json_schema.strict", "Invalid type" },
        { """{"type":"json_schema","json_schema":{"name":"x","description":1,"schema":{}}}""", "response_format.json_schema.description", "Invalid type" },
        { """{"type":"json_schema","json_schema":{"name":"x","schema":"{}"}}""", SchemaParam, "Invalid type" },
        { """{"type":"json_schema","json_schema":{"name":"x","schema":[]}}""", SchemaParam, "Invalid type" },
        { """{"type":"json_schema","json_schema":{"name":"x","schema":false}}""", SchemaParam, "Invalid type" },
        // bad types and keywords
        { Schema("""{"type":"strange"}"""), SchemaParam, "Unknown type 'strange'" },
        { Schema("""{"type":["string",3]}"""), SchemaParam, "type" },
        { Schema("""{"type":{}}"""), SchemaParam, "type" },
        { Schema("""{"allOf":[{"type":"string"}]}"""), SchemaParam, "'allOf' at #/allOf" },
        { Schema("""{"not":{}}"""), SchemaParam, "'not'" },
        { Schema("""{"if":{},"then":{},"else":{}}"""), SchemaParam, "'if'" },
        { Schema("""{"type":"array","uniqueItems":true}"""), SchemaParam, "uniqueItems" },
        { Schema("""{"type":"array","contains":{"type":"string"}}"""), SchemaParam, "contains" },
        { Schema("""{"type":"object","patternProperties":{"a":{}}}"""), SchemaParam, "patternProperties" },
        { Schema("""{"type":"object","propertyNames":{"maxLength":3}}"""), SchemaParam, "propertyNames" },
        { Schema("""{"type":"object","minProperties":1}"""), SchemaParam, "minProperties" },
        { Schema("""{"type":"object","dependentRequired":{"a":["b"]}}"""), SchemaParam, "dependentRequired" },
        { Schema("""{"type":"object","unevaluatedProperties":false}"""), SchemaParam, "unevaluatedProperties" },
        { Schema("""{"type":"number","multipleOf":2}"""), SchemaParam, "multipleOf" },
        { Schema("""{"type":"number","maximum":1.5}"""), SchemaParam, "maximum" },
        { Schema("""{"type":"string","format":"email"}"""), SchemaParam, "'email'" },
        { Schema("""{"type":"string","format":"uuid","maxLength":3}"""), SchemaParam, "format" },
        { Schema("""{"type":"string","nullable":true}"""), SchemaParam, "nullable" },
        { Schema("""{"properties":{"a":{"type":"string","x-custom":1}}}"""), SchemaParam, "#/properties/a/x-custom" },
        // objects
        { Schema("""{"type":"object","properties":{"a":{}},"required":["b"]}"""), SchemaParam, "'b' is not declared" },
        { Schema("""{"type":"object","properties":{"a":false},"required":["a"]}"""), SchemaParam, "required" },
        { Schema("""{"type":"object","required":"a"}"""), SchemaParam, "required" },
        { Schema("""{"type":"object","properties":{"a":7}}"""), SchemaParam, "#/properties/a" },
        { Schema("""{"type":"object","additionalProperties":"no"}"""), SchemaParam, "additionalProperties" },
        { Schema("{\"type\":\"object\",\"properties\":{" + string.Join(",", Enumerable.Range(0, 300).Select(i => $"\"p{i}\":{{}}")) + "}}"), SchemaParam, "More than 256 properties" },
        // arrays and lengths
        { Schema("""{"type":"array","minItems":5,"maxItems":2}"""), SchemaParam, "less than minItems" },
        { Schema("""{"type":"array","maxItems":100000}"""), SchemaParam, "at most 512" },
        { Schema("""{"type":"array","minItems":-1}"""), SchemaParam, "non-negative" },
        { Schema("""{"type":"array","minItems":1.5}"""), SchemaParam, "non-negative integer" },
        { Schema("""{"type":"array","items":false,"minItems":1}"""), SchemaParam, "items" },
        { Schema("""{"type":"array","prefixItems":[{}],"items":false,"minItems":2}"""), SchemaParam, "minItems" },
        { Schema("""{"type":"string","maxLength":1000000000000}"""), SchemaParam, "maxLength" },
        { Schema("""{"type":"string","minLength":3,"maxLength":1}"""), SchemaParam, "less than minLength" },
        // enums and consts
        { Schema("""{"enum":[]}"""), SchemaParam, "empty 'enum'" },
        { Schema("""{"enum":{"a":1}}"""), SchemaParam, "'enum' must be an array" },
        { Schema("{\"enum\":[" + string.Join(",", Enumerable.Range(0, 10_000).Select(i => i.ToString(System.Globalization.CultureInfo.InvariantCulture))) + "]}"), SchemaParam, "at most 256" },
        { Schema("""{"anyOf":[]}"""), SchemaParam, "anyOf" },
        { Schema("""{"oneOf":{}}"""), SchemaParam, "oneOf" },
        { Schema("""{"anyOf":[{"type":"string"}],"minLength":1}"""), SchemaParam, "beside 'anyOf'" },
        { Schema("""{"type":"integer","minimum":9,"maximum":3}"""), SchemaParam, "range is empty" },
        { Schema("""{"type":"integer","exclusiveMinimum":3,"exclusiveMaximum":4}"""), SchemaParam, "range is empty" },
        { Schema("""{"type":"integer","maximum":1e100}"""), SchemaParam, "maximum" },
        { Schema("""{"type":"integer","minimum":"0"}"""), SchemaParam, "minimum" },
        // $ref
        { Schema("""{"$ref":"#/$defs/nowhere"}"""), SchemaParam, "points to nothing" },
        { Schema("""{"$ref":"http://evil.example/schema"}"""), SchemaParam, "Only local references" },
        { Schema("""{"$ref":"file:///etc/passwd"}"""), SchemaParam, "Only local references" },
        { Schema("""{"$ref":5}"""), SchemaParam, "$ref" },
        { Schema("""{"$ref":"#"}"""), SchemaParam, "never ends" },
        { Schema("""{"$defs":{"a":{"$ref":"#/$defs/a"}},"$ref":"#/$defs/a"}"""), SchemaParam, "never ends" },
        { Schema("""{"$defs":{"a":{"$ref":"#/$defs/b"},"b":{"anyOf":[{"type":"null"},{"$ref":"#/$defs/a"}]}},"$ref":"#/$defs/a"}"""), SchemaParam, "never ends" },
        { Schema("""{"$defs":{"a":{"type":"string"}},"$ref":"#/$defs/a","maxLength":2}"""), SchemaParam, "beside '$ref'" },
        { Schema("""{"definitions":{"n":{"type":"array","items":{"$ref":"#/definitions/n"},"minItems":1}},"$ref":"#/definitions/n","title":"ok"}"""), "", "" },
        // patterns
        { Schema("""{"type":"string","pattern":"(a)\\1"}"""), SchemaParam, "backreference" },
        { Schema("""{"type":"string","pattern":"^(?=x)y$"}"""), SchemaParam, "lookaround" },
        { Schema("""{"type":"string","pattern":"^(?<!x)y$"}"""), SchemaParam, "lookaround" },
        { Schema("""{"type":"string","pattern":"\\bword\\b"}"""), SchemaParam, "word boundary" },
        { Schema("""{"type":"string","pattern":"^(a*)*$"}"""), SchemaParam, "empty string" },
        { Schema("""{"type":"string","pattern":"^(a?)+$"}"""), SchemaParam, "empty string" },
        { Schema("""{"type":"string","pattern":"^(|b){2,}$"}"""), SchemaParam, "empty string" },
        { Schema("""{"type":"string","pattern":"^a{99999}$"}"""), SchemaParam, "repetition count" },
        { Schema("""{"type":"string","pattern":"^a{3,1}$"}"""), SchemaParam, "n < m" },
        { Schema("""{"type":"string","pattern":"^a**$"}"""), SchemaParam, "quantifier after a quantifier" },
        { Schema("""{"type":"string","pattern":"^[z-a]$"}"""), SchemaParam, "out of order" },
        { Schema("""{"type":"string","pattern":"^[abc$"}"""), SchemaParam, "unclosed character class" },
        { Schema("""{"type":"string","pattern":"^(abc$"}"""), SchemaParam, "unclosed group" },
        { Schema("""{"type":"string","pattern":"abc)"}"""), SchemaParam, "unexpected ')'" },
        { Schema("""{"type":"string","pattern":"^a$b$"}"""), SchemaParam, "anchor" },
        { Schema("""{"type":"string","pattern":"^a|b"}"""), SchemaParam, "only one end anchored" },
        { Schema("""{"type":"string","pattern":"^\\p{L}$"}"""), SchemaParam, "Unicode property" },
        { Schema("""{"type":"string","pattern":"^\\q$"}"""), SchemaParam, "unknown escape" },
        { Schema("""{"type":"string","pattern":"^[\\u0100-\\uFFFF]$"}"""), SchemaParam, "more than 256 non-ASCII" },
        { Schema("""{"type":"string","pattern":"^a++$"}"""), SchemaParam, "possessive" },
        { Schema("{\"type\":\"string\",\"pattern\":\"" + new string('a', 2000) + "\"}"), SchemaParam, "at most 1024" },
        { Schema("""{"type":"string","pattern":"^a$","maxLength":3}"""), SchemaParam, "pattern" },
        // sizes and depth
        { Schema(Nested("{\"type\":\"array\",\"items\":", "}", 26)), SchemaParam, "nests deeper than 24" },
        { Schema("{\"description\":\"" + new string('d', 70_000) + "\"}"), SchemaParam, "at most 65536" },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void HostileResponseFormatIs400NamingTheField(string responseFormat, string param, string messagePart)
    {
        var body = $$"""{"model":"m","messages":[{"role":"user","content":"hi"}],"response_format":{{responseFormat}}}""";
        var watch = Stopwatch.StartNew();
        var error = Record.Exception(() => CompletionRequestParser.Parse(Encoding.UTF8.GetBytes(body), CompletionKind.Chat));
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(2), $"parsing took {watch.Elapsed}");
        if (param.Length == 0)
        {
            // The control case: a recursive schema through an array is fine.
            Assert.Null(error);
            return;
        }
        var api = Assert.IsType<ApiErrorException>(error);
        Assert.Equal(400, api.Error.Status);
        Assert.Equal(param, api.Error.Param);
        Assert.Contains(messagePart, api.Error.Message);
    }

    [Fact]
    public void CaseCountIsWhatTheIssueAsks() => Assert.True(Cases.Count >= 90, $"{Cases.Count} cases");

    [Fact]
    public void DeepBodyBeyondTheParsersDepthIsInvalidJson()
    {
        var body = $$"""{"model":"m","messages":[{"role":"user","content":"hi"}],"response_format":{{Schema(Nested("{\"items\":", "}", 40))}}}""";
        var error = Assert.Throws<ApiErrorException>(() => CompletionRequestParser.Parse(Encoding.UTF8.GetBytes(body), CompletionKind.Chat));
        Assert.Equal(400, error.Error.Status);
        Assert.Equal("invalid_json", error.Error.Code);
    }

    [Theory]
    [InlineData("""{"type":"text"}""", false)]
    [InlineData("""{"type":"json_object"}""", true)]
    [InlineData("""{"type":"json_schema","json_schema":{"name":"a-b_c","schema":{"type":"object","properties":{"n":{"type":"integer"}}}}}""", true)]
    [InlineData("""{"type":"json_schema","json_schema":{"name":"x"}}""", true)]
    [InlineData("null", false)]
    public void AcceptedFormats(string responseFormat, bool grammar)
    {
        var body = $$"""{"model":"m","prompt":"hi","response_format":{{responseFormat}}}""";
        var request = CompletionRequestParser.Parse(Encoding.UTF8.GetBytes(body), CompletionKind.Text);
        Assert.Equal(grammar, request.Grammar is not null);
        if (grammar) Assert.StartsWith("root ::= ", request.Grammar!.Gbnf);
    }
}
