namespace Potluck.Gateway; internal static class AssemblyMarker { }
