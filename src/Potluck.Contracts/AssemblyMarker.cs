namespace Potluck.Contracts; internal static class AssemblyMarker { }
