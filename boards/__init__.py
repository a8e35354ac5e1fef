"""Board descriptions (one YAML file per board), shipped as package data; read by
`microexport.deploy.boards`."""
