namespace Potluck.Node; internal static class AssemblyMarker { }
