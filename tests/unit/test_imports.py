"""The import graph of mlapi has no cycle (lint-imports checks the contracts in pyproject.toml)."""

import grimp


def internal_graph():
    graph = grimp.build_graph("mlapi")
    return {module: graph.find_modules_directly_imported_by(module) for module in graph.modules}


def find_cycle(graph):
    """One import cycle as a list of modules (first == last), or None."""
    done, path, on_path = set(), [], set()

    def visit(module):
        path.append(module)
        on_path.add(module)
        for imported in sorted(graph.get(module, ())):
            if imported in on_path:
                return path[path.index(imported) :] + [imported]
            if imported not in done:
                cycle = visit(imported)
                if cycle:
                    return cycle
        path.pop()
        on_path.discard(module)
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def test_no_module_of_mlapi_imports_itself_through_others():
    assert find_cycle(internal_graph()) is None


def test_find_cycle_reports_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_extensions_import_nothing_from_mlapi():
    imported = internal_graph()["mlapi.extensions"]
    assert {module for module in imported if module.startswith("mlapi")} == set()
