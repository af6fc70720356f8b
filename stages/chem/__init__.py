"""Chemistry shared by the molecule methods: the sEH proxy reward (`seh_proxy`), drug-likeness
properties and filters (`properties`), fragment vocabularies (`blocks`), and the docking oracle."""
