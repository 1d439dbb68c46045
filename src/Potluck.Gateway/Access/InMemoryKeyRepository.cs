using System.Xml.Linq;
using Microsoft.AspNetCore.DataProtection.Repositories;

namespace Potluck.Gateway.Access;

/// <summary>
/// Data-protection keys (which sign the dashboard's login cookie) held in memory only: nothing is written under HOME
/// (read-only in containers), and a restart simply asks the operator to log in again.
/// </summary>
internal sealed class InMemoryKeyRepository : IXmlRepository
{
    private readonly Lock _gate = new();
    private readonly List<XElement> _elements = [];

    public IReadOnlyCollection<XElement> GetAllElements()
    {
        lock (_gate) return [.. _elements.Select(e => new XElement(e))];
    }

    public void StoreElement(XElement element, string friendlyName)
    {
        lock (_gate) _elements.Add(new XElement(element));
    }
}
