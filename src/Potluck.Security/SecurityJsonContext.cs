using System.Text.Json.Serialization;

namespace Potluck.Security;

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower, WriteIndented = true, UseStringEnumConverter = true)]
[JsonSerializable(typeof(string[]))]
[JsonSerializable(typeof(List<StoredJoinToken>))]
[JsonSerializable(typeof(JoinToken.Wire))]
internal sealed partial class SecurityJsonContext : JsonSerializerContext;
